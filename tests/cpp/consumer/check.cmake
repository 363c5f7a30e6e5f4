# ctest script: install scree from SRC into a scratch prefix, then configure, build and run the
# consumer project against it with find_package(scree) — what a C++ user does.
set(work "${BIN}/consumer_check")
file(REMOVE_RECURSE "${work}")
foreach(step
    "${CMAKE_COMMAND};-S;${SRC};-B;${work}/scree;-G;Ninja;-DSCREE_CUDA=OFF;-DCMAKE_INSTALL_PREFIX=${work}/prefix"
    "${CMAKE_COMMAND};--build;${work}/scree"
    "${CMAKE_COMMAND};--install;${work}/scree"
    "${CMAKE_COMMAND};-S;${SRC}/tests/cpp/consumer;-B;${work}/app;-G;Ninja;-DCMAKE_PREFIX_PATH=${work}/prefix"
    "${CMAKE_COMMAND};--build;${work}/app"
    "${work}/app/consumer")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${step}\n${out}\n${err}")
  endif()
endforeach()
message(STATUS "${out}")

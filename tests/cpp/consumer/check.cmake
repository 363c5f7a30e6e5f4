# ctest script: install the scree this build tree compiled (BUILD_ROOT) into a scratch prefix, then
# configure, build and run the consumer project against it with find_package(scree): what a C++
# user does after `cmake --install`. The install rules, the exported targets and the package config
# are what it checks; it installs the tree's own scree_core instead of configuring and compiling
# scree a second time from SRC (the five CPU kernel builds again: 135 of ctest's 150 s on 2 cores).
# CXX: the tree's compiler; SANITIZE: its -fsanitize list, if any (the runtimes to link).
set(work "${BIN}/consumer_check")
file(REMOVE_RECURSE "${work}")
set(app_defs "-DCMAKE_PREFIX_PATH=${work}/prefix;-DCMAKE_CXX_COMPILER=${CXX}")
if(SANITIZE)
  list(APPEND app_defs "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
foreach(step
    "${CMAKE_COMMAND};--install;${BUILD_ROOT};--prefix;${work}/prefix"
    "${CMAKE_COMMAND};-S;${SRC}/tests/cpp/consumer;-B;${work}/app;-G;Ninja;${app_defs}"
    "${CMAKE_COMMAND};--build;${work}/app"
    "${work}/app/consumer")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${step}\n${out}\n${err}")
  endif()
endforeach()
message(STATUS "${out}")

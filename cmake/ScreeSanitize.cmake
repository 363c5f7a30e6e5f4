# Sanitizer and libFuzzer flags for the C++ core and its tests (issue 14). Both are for local
# hardening runs (tools/sanitize_cpp.sh), never for wheels: a sanitized scree._C would need the
# sanitizer runtime preloaded into Python.
#   SCREE_SANITIZE=address,undefined  -> -fsanitize=address,undefined on scree_core and the tests
#   SCREE_FUZZ=ON                     -> libFuzzer targets tests/cpp/fuzz_*.cpp (needs clang)
# Flags go to host C++ compilation only ($<COMPILE_LANGUAGE:CXX>): nvcc device code never sees
# them (device code has no sanitizer runtime; compute-sanitizer is the GPU's tool).

set(SCREE_SANITIZE "" CACHE STRING "Comma-separated -fsanitize= list for scree_core and the C++ tests (e.g. address,undefined); empty = off")
option(SCREE_FUZZ "Build the libFuzzer targets tests/cpp/fuzz_*.cpp (clang only; needs SCREE_BUILD_TESTS)" OFF)

set(SCREE_SANITIZE_FLAGS)
if(SCREE_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "SCREE_SANITIZE needs GCC or Clang, got ${CMAKE_CXX_COMPILER_ID}")
  endif()
  # -g: reports name file:line; no frame-pointer omission: ASan's fast unwinder needs them.
  set(SCREE_SANITIZE_FLAGS -fsanitize=${SCREE_SANITIZE} -fno-omit-frame-pointer -g)
  if(SCREE_SANITIZE MATCHES "undefined")
    # UBSan only prints and goes on by default; a finding must fail the test.
    list(APPEND SCREE_SANITIZE_FLAGS -fno-sanitize-recover=undefined)
  endif()
  message(STATUS "scree: sanitizers ${SCREE_SANITIZE} on scree_core and the C++ tests (host code only)")
endif()

if(SCREE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "SCREE_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++")
  endif()
  if(NOT SCREE_BUILD_TESTS)
    message(FATAL_ERROR "SCREE_FUZZ builds its targets in tests/cpp: set SCREE_BUILD_TESTS=ON too")
  endif()
endif()

# Sanitizer flags on `target`'s C++ sources (plus coverage instrumentation for libFuzzer when
# SCREE_FUZZ is on). `link` (PUBLIC, INTERFACE, PRIVATE or NONE) says how the runtime is linked:
# a static library passes it on to whatever links it, object libraries link nothing.
function(scree_sanitize target link)
  set(compile ${SCREE_SANITIZE_FLAGS})
  if(SCREE_FUZZ)
    list(APPEND compile -fsanitize=fuzzer-no-link)
  endif()
  if(NOT compile)
    return()
  endif()
  target_compile_options(${target} PRIVATE "$<$<COMPILE_LANGUAGE:CXX>:${compile}>")
  if(NOT link STREQUAL "NONE")
    # The same flags at link time bring the runtimes (fuzzer-no-link: the coverage callbacks).
    # BUILD_INTERFACE: an installed scree::core must not ask its users for them.
    target_link_options(${target} ${link} "$<BUILD_INTERFACE:${compile}>")
  endif()
endfunction()

# ctest cuda_emulation_barriers_needed: every __syncthreads() in the CUDA sources is needed by
# some kernel test. For each call site (FILE:LINE, found here, so a new barrier is covered
# without a list to update), the plain kernel test runs with DDF_EMU_SKIP_BARRIER set to it,
# which makes that barrier a no-op, and must fail. A barrier whose removal no test notices is
# either untested (add a case that needs it) or unneeded (remove it).
#   cmake -DKERNEL_TEST=<ddf_emu_test_kernels_plain> -DCUDA_DIR=<csrc/cuda> -P barriers_needed.cmake
file(GLOB sources "${CUDA_DIR}/*.cuh" "${CUDA_DIR}/*.cu" "${CUDA_DIR}/*.h")
set(sites "")
foreach(source IN LISTS sources)
  get_filename_component(name "${source}" NAME)
  # Code, not a comment: no // before the call. (grep -n: file(STRINGS) skips empty lines.)
  execute_process(COMMAND grep -n "^[^/]*__syncthreads()" "${source}" OUTPUT_VARIABLE found)
  string(REGEX MATCHALL "(^|\n)[0-9]+:" numbers "${found}")
  foreach(number IN LISTS numbers)
    string(REGEX REPLACE "[^0-9]" "" number "${number}")
    list(APPEND sites "${name}:${number}")
  endforeach()
endforeach()
list(LENGTH sites count)
if(count EQUAL 0)
  message(FATAL_ERROR "no __syncthreads() found under ${CUDA_DIR}")
endif()
set(unneeded "")
foreach(site IN LISTS sites)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env DDF_EMU_SKIP_BARRIER=${site} ${KERNEL_TEST} --fail-fast
    RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(result EQUAL 0)
    list(APPEND unneeded "${site}")
    message(STATUS "${site}: every kernel test passes without it")
  else()
    string(REGEX MATCH "[^\n]*(FAIL|mismatch|Fault|fault)[^\n]*" first "${output}")
    message(STATUS "${site}: needed (${first})")
  endif()
endforeach()
if(unneeded)
  message(FATAL_ERROR "no kernel test needs the __syncthreads() at: ${unneeded}")
endif()
message(STATUS "each of the ${count} __syncthreads() is needed by a kernel test")

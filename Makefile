# make test   - on a fresh machine: .venv, torch==2.14.1 + test deps, build (CUDA kernels
#               too when nvcc and a CUDA torch are there), the CMake/libtorch build and its
#               C++ test, then pytest: every test.
# make test-fast - the same set-up without the CMake build, then the kernel-level tests only
#               (below): a few minutes, for the edit-build-test loop. CI runs `make test`.
# make demo   - the same set-up, then `python -m ddf_ops`.
# make gpu-check - on a GPU machine with torch installed (no internet): build, CUDA tests,
#               compute-sanitizer (memcheck, racecheck, synccheck) when the toolkit has it,
#               GPU benchmark, all into gpu-check.log.
# make bench  - the CPU benchmark (python -m benchmarks.bench_cpu).
# make cuda-emulation - the CUDA kernels under the host emulator, no GPU needed: the C++
#               tests (plain, ASan+UBSan, TSan) and the pytest suite's cuda_emulated device.
# make cpp-example - the C++/AOTInductor example (examples/cpp), below.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.14.1
# Test-only: hypothesis (property tests), timm (the registry entry points), torchvision
# (FX feature extraction), onnx/onnxscript/onnxruntime (the ONNX export check), matplotlib
# (the benchmark plot), pytest-timeout (a deadlocked test fails instead of hanging: the limits
# are in pyproject.toml), pytest-xdist (test-fast in 2 processes), build (make wheel: PyPA's
# front end, as `python -m build`). None is needed to use ddf_ops.
# pycocotools: COCO mAP for the detection example and its tests (torchmetrics' mAP would need it too).
TEST_DEPS := build==1.6.1 ninja pytest pytest-timeout==2.4.0 pytest-xdist==3.8.0 expecttest hypothesis timm==1.0.29 torchvision==0.29.1 \
	onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0 matplotlib==3.11.2 pycocotools==2.0.11
PYTEST_ARGS ?=
export MAX_JOBS ?= 2

# The nvcc on PATH may be a wrapper outside the toolkit; point torch at the real toolkit.
ifeq ($(CUDA_HOME),)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME := /usr/local/cuda
endif
endif

CMAKE_BUILD_DIR := build/cmake

.PHONY: test test-fast demo build cmake-build cmake-test cuda-emulation cpp-example bench gpu-check clean

# The stamp depends on this file, so a change to TEST_DEPS reinstalls.
$(VENV)/.installed: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(TEST_DEPS)
	touch $@

build: $(VENV)/.installed
	$(PY) setup.py --quiet build_ext --inplace

# The CMake build's CUDA kernels are only compiled here (the tests run the CPU kernels
# through it, and cuda-resources reads setup.py's cubins), so one architecture proves that
# they build, in a quarter of the time; libtorch users get CMakeLists.txt's four by default.
CMAKE_CUDA_ARCHS ?= 9.0
cmake-build: $(VENV)/.installed
	cmake -S . -B $(CMAKE_BUILD_DIR) -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DTORCH_CUDA_ARCH_LIST="$(CMAKE_CUDA_ARCHS)"
	cmake --build $(CMAKE_BUILD_DIR) -j $(MAX_JOBS)

cmake-test: cmake-build
	ctest --test-dir $(CMAKE_BUILD_DIR) --output-on-failure -j $(MAX_JOBS)

# The pytest suite loads the emulated CUDA ops from the CMake build; with this set, a
# missing one is an error instead of a (visible) skip.
REQUIRE_EMULATION := DDF_REQUIRE_CUDA_EMULATION=1
# Every test dependency was installed above: one that fails to import is an error, not a skip
# (tests/conftest.py, import_test_dependency).
REQUIRE_TEST_DEPS := DDF_REQUIRE_TEST_DEPS=1
# pytest-timeout loaded by name: without it pytest would take the limits in pyproject.toml
# as unknown options, warn, and let a deadlock hang.
PYTEST := $(PY) -m pytest -p timeout

cuda-emulation: build cmake-build
	ctest --test-dir $(CMAKE_BUILD_DIR) --output-on-failure -j $(MAX_JOBS) -L cuda_emulation
	$(REQUIRE_EMULATION) $(REQUIRE_TEST_DEPS) $(PYTEST) tests -m cuda_emulation $(PYTEST_ARGS)

# make test's pytest: two runs whose selections together are every test, each test once.
#   1. The kernel tier (FAST_SELECTION, below) in TEST_WORKERS processes of two OpenMP
#      threads each: the planner takes the thread count, so every reference comparison runs
#      the kernels' multi-threaded plans and work split, as a user's call would. OpenMP's
#      passive wait (threads sleep between parallel regions instead of spinning) lets two
#      such processes share 2 cores: 147 s, against 185 s in one process (measured; spinning
#      threads made that mix up to 30 times slower, test-fast's note below).
#   2. The rest (compile, export, the emulator, the forced-ISA and other subprocess tests, the
#      9 GB test) in TEST_WORKERS processes of one OpenMP thread each: these are one core
#      each (Python, Inductor, the emulator), so two workers halve their time on 2 cores.
TEST_WORKERS ?= 2
test: build cmake-test
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(REQUIRE_EMULATION) $(REQUIRE_TEST_DEPS) $(PYTEST) -n $(TEST_WORKERS) tests \
	  -m "$(FAST_SELECTION)" --durations=10 $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 $(REQUIRE_EMULATION) $(REQUIRE_TEST_DEPS) $(PYTEST) -n $(TEST_WORKERS) tests -m "not ($(FAST_SELECTION))" \
	  --durations=10 $(PYTEST_ARGS)

# make test-fast - the kernel-level tests: the CPU kernels against the float64 reference and
#               the other oracles (tests/test_oracles.py), gradients, gradcheck and
#               gradgradcheck, non-finite and hostile inputs, bad inputs, opcheck, fuzzing,
#               torch.func. 2 min 21 s on 2 cores once the library is built (measured
#               2026-12-03; a fresh clone adds the venv, 1.5 min, and the build, about 3.5);
#               no CMake build. It leaves out, by the markers of pyproject.toml:
#   slow            the > 2^31-element test (9 GB, a minute);
#   cuda_emulation  the CUDA kernels under the host emulator: they need the CMake build and
#                   take seconds per call (`make cuda-emulation` runs them alone);
#   integration     compile, export/AOTInductor, ONNX, timm, torchvision, distributed, the
#                   demo, models, the library in fresh processes, the benchmark plot: not the
#                   kernels, and seconds to minutes each;
#   forced_isa      tests/test_isas.py, the ISA-dependent tests again with AVX2 and the
#                   baseline forced: this run tests the machine's own ISA.
# The C++ tests (ctest) need the CMake build too, and stay with `make test`.
# Most of these tests are small tensors and Python (the float64 reference), one core each:
# pytest-xdist runs them in FAST_WORKERS processes, one thread each (OMP_NUM_THREADS=1): two
# workers of two OpenMP threads on two cores made the gradchecks, thousands of small
# parallel regions, up to 30 times slower (measured). The kernels' work split across threads
# is then tested here by the thread-count determinism tests, which set their own counts;
# `make test` runs everything with torch's default threads.
FAST_SELECTION := not slow and not cuda_emulation and not integration and not forced_isa
FAST_WORKERS ?= 2
test-fast: build
	OMP_NUM_THREADS=1 $(REQUIRE_TEST_DEPS) $(PYTEST) -n $(FAST_WORKERS) tests -m "$(FAST_SELECTION)" $(PYTEST_ARGS)

demo: build
	$(PY) -m ddf_ops $(DEMO_ARGS)

# make detection-example - FCOS on ResNet-50 / DDF-ResNet-50 + FPN (nearest / DDF-Up), trained
#               from scratch on synthetic shapes, COCO mAP on held-out images (README, "Detection").
# make upsampling-example - guided x4 depth upsampling: nearest, bilinear, transposed conv,
#               DDF-Up; PSNR on held-out synthetic scenes and a PNG (README, "Guided upsampling").
# Both run on the CPU in minutes; DETECTION_ARGS / UPSAMPLING_ARGS pass options (--device cuda, --steps).
.PHONY: detection-example upsampling-example
EXAMPLES_DIR ?= build/examples
detection-example: build
	PYTHONPATH=. $(PY) examples/detection.py $(DETECTION_ARGS)

upsampling-example: build
	PYTHONPATH=. $(PY) examples/guided_upsampling.py --out $(EXAMPLES_DIR)/guided_upsampling.png $(UPSAMPLING_ARGS)

# The C++/AOTInductor example, as a libtorch user would do it: the library's CMake build
# (cmake-build, the one `make test` already made: no second compile of the library, which
# the CPU-only copy used to cost CI), installed with its CMake package under
# $(CPP_EXAMPLE_DIR)/prefix (the library and its package only: the tests and the emulator
# are not installed; with a CUDA build the package carries the CUDA hints, as a user's
# would); DDF-ResNet-50 exported and compiled by AOTInductor in Python
# (examples/cpp/export_model.py, a 2x3x64x64 input); the example built against the installed
# package (find_package(ddf_ops)) and run on the CPU: it fails unless its logits match
# Python's eager logits.
CPP_EXAMPLE_DIR := build/cpp-example
TORCH_CMAKE_PREFIX = $$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')
cpp-example: build cmake-build
	rm -rf $(CPP_EXAMPLE_DIR)/prefix
	cmake --install $(CMAKE_BUILD_DIR) --prefix $(CURDIR)/$(CPP_EXAMPLE_DIR)/prefix
	PYTHONPATH=$(CURDIR) $(PY) examples/cpp/export_model.py $(CPP_EXAMPLE_DIR)/model
	cmake -S examples/cpp -B $(CPP_EXAMPLE_DIR)/example -G Ninja \
	  -DCMAKE_PREFIX_PATH="$(CURDIR)/$(CPP_EXAMPLE_DIR)/prefix;$(TORCH_CMAKE_PREFIX)"
	cmake --build $(CPP_EXAMPLE_DIR)/example -j $(MAX_JOBS)
	$(CPP_EXAMPLE_DIR)/example/ddf_aoti_example $(CPP_EXAMPLE_DIR)/model/ddf_resnet50.pt2 $(CPP_EXAMPLE_DIR)/model/reference.pt

# make wheel - dist/: a wheel (the compiled library, with CUDA kernels when built with them;
#               its build info; torch==<the release it was compiled against> as its
#               requirement) and the sdist, built against the installed torch (--no-isolation).
#               The wheel reuses make build's objects (the same build directory: ninja relinks).
wheel: build
	rm -rf dist
	$(PY) -m build --wheel --sdist --no-isolation --outdir dist .

# make wheel-check - the wheel installed into a fresh venv (pip fetches the torch it requires)
#               and used from outside the checkout (tools/wheel_smoke.py: the op against the
#               reference, a module, torch.compile, torch.export); the sdist's contents checked.
#               The venv holds a second torch with its CUDA libraries (5.4 GB): removed once
#               the check has passed.
WHEEL_VENV := build/wheel-venv
.PHONY: wheel wheel-check
wheel-check: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet dist/ddf_ops-*.whl
	cd $(WHEEL_VENV) && bin/python $(CURDIR)/tools/wheel_smoke.py $(CURDIR)
	$(PY) tools/check_sdist.py dist/ddf_ops-*.tar.gz
	rm -rf $(WHEEL_VENV)

bench: build
	$(PY) -m benchmarks.bench_cpu

# make cuda-resources - static checks of the compiled CUDA kernels, no GPU needed
#               (tools/cuda_static/cuda_resources.py): registers, stack, spills, shared memory
#               and occupancy per kernel and architecture; fails on a spill, a stack frame,
#               or a CPU-only build (CUDA_RESOURCES_ARGS=--allow-cpu-only).
CUDA_RESOURCES_ARGS ?=
.PHONY: cuda-resources
cuda-resources: build
	$(PY) -m tools.cuda_static.cuda_resources $(CUDA_RESOURCES_ARGS)

# make sanitize - the CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: a
#               sanitized CPU-only CMake build (build/sanitize), its C++ test, then the
#               Python op tests against that library (libasan/libubsan preloaded into Python,
#               leak checks off: CPython's own allocations are not freed at exit).
SANITIZE_DIR := build/sanitize
# Every CPU op test file (CI runs them all: a few minutes). AddressSanitizer runs them a few
# times slower: a per-test limit of 30 minutes instead of pyproject's 10. In TEST_WORKERS
# processes of one OpenMP thread, as make test's second run (3.7 min in one process, 2 on 2
# cores); the thread-count tests among them set their own counts, so the kernels' work split
# across threads still runs under the sanitizers.
SANITIZE_TESTS ?= tests/test_forward.py tests/test_head_kernel.py tests/test_backward.py tests/test_hostile_inputs.py tests/test_bad_inputs.py \
	tests/test_fuzz.py tests/test_channels_vectorized.py tests/test_cpu_plan.py tests/test_oracles.py
# Python with the sanitizer runtimes preloaded and the sanitized library in place of ddf_ops/_C
# (DDF_TESTS_SANITIZED: tests/test_backward.py's gradchecks take their fast mode there).
SANITIZED_PY := DDF_TESTS_SANITIZED=1 ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	DDF_OPS_LIBRARY=$(SANITIZE_DIR)/libddf_ops.so DDF_CUDA_EMULATION_LIBRARY=/nonexistent $(PY)
.PHONY: sanitize
sanitize: $(VENV)/.installed
	cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
	  -DDDF_CUDA=OFF -DDDF_CUDA_EMULATION_TESTS=OFF -DDDF_SANITIZE=ON
	cmake --build $(SANITIZE_DIR) -j $(MAX_JOBS)
	nm -D $(SANITIZE_DIR)/libddf_ops.so | grep -q __asan_report  # really instrumented
	ctest --test-dir $(SANITIZE_DIR) --output-on-failure
	$(SANITIZED_PY) -c 'import ddf_ops; p = ddf_ops.library_path(); \
	  assert p.endswith("$(SANITIZE_DIR)/libddf_ops.so"), p; print("ops from", p)'
	OMP_NUM_THREADS=1 $(SANITIZED_PY) -m pytest -p timeout --timeout=1800 -n $(TEST_WORKERS) $(SANITIZE_TESTS) -k "not cuda_emulated" \
	  -p no:cacheprovider -q $(PYTEST_ARGS)

# make cross-aarch64 - compiles the library's C++ sources (CPU kernels, checks, meta,
#               autograd, autocast) for aarch64 with a cross compiler (Debian's
#               g++-aarch64-linux-gnu) against this torch's headers, and checks that the CPU
#               kernels' vector loops became NEON (fmla). Objects only: there is no aarch64
#               libtorch here to link against.
CROSS_CXX ?= aarch64-linux-gnu-g++
CROSS_DIR := build/aarch64
.PHONY: cross-aarch64
cross-aarch64: $(VENV)/.installed
	@command -v $(CROSS_CXX) >/dev/null || { echo "cross-aarch64: $(CROSS_CXX) not found (apt-get install g++-aarch64-linux-gnu)"; exit 1; }
	mkdir -p $(CROSS_DIR)
	export CROSS_INC="$$($(PY) -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')"; \
	ls csrc/*.cpp csrc/cpu/*.cpp csrc/cpu/*/*.cpp csrc/autograd/*.cpp csrc/autocast/*.cpp meta/*.cpp | \
	  xargs -P $(MAX_JOBS) -I{} sh -c 'echo "  $(CROSS_CXX) {}"; \
	    $(CROSS_CXX) -std=c++20 -O2 -fPIC -fopenmp -Wall $$CROSS_INC -c {} -o $(CROSS_DIR)/$$(basename {}).o'
	$(CROSS_CXX:g++=objdump) -d $(CROSS_DIR)/ddf_cpu.cpp.o | grep -qE 'fmla[[:space:]]+v[0-9]+\.4s'
	@echo "cross-aarch64: OK (NEON fmla in the CPU kernels)"

# For a GPU machine that already has torch (and no internet): no venv, no downloads. The stages
# (build, CUDA correctness, benchmark, compute-sanitizer memcheck/racecheck/synccheck where the
# toolkit has it, an optional Nsight Compute profile, the rest of `pytest -m cuda`), their time
# limits and knobs are in tools/gpu_check.sh; the log is gpu-check.log, each stage's also
# gpu-<stage>.log.
GPU_PYTHON ?= python3
gpu-check:
	set -o pipefail; GPU_PYTHON=$(GPU_PYTHON) bash tools/gpu_check.sh 2>&1 | tee gpu-check.log

clean:
	rm -rf build ddf_ops/_C*.so *.egg-info

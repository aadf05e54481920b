# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs. torch is pinned: an open range would pull the newest CUDA build (several GB).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH := torch==2.13.0
# The other backends, pinned to versions that install from PyPI as CPU builds.
OTHER_FRAMEWORKS := tensorflow-cpu==2.21.0 jax==0.10.2 jaxlib==0.10.2
# Frameworks (and the C kernel) the tests must find: a missing one fails the run instead of skipping.
export LOVASZ_REQUIRE := torch,tensorflow,keras,jax,kernel

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml Makefile | $(PY)
	$(PIP) $(TORCH)
	$(PIP) -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml Makefile $(VENV)/.demo-installed
	$(PIP) -e ".[demo,test,bench]" $(OTHER_FRAMEWORKS)
	# The original implementation, to compare against: its __init__ needs timm and torchvision,
	# so only the package's files are installed and lovasz.peers loads the one file by path.
	$(PIP) --no-deps segmentation-models-pytorch==0.6.0
	touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m lovasz.cli demo $(ARGS)

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -n auto $(ARGS)

bench: $(VENV)/.test-installed
	$(PY) -m lovasz.cli bench $(ARGS)

clean:
	rm -rf $(VENV) demo-output bench-output

# mpcl: `make demo` and `make test` set everything up first (idempotent), then run.
SHELL := /bin/bash
PYTHON ?= python3
APT_PACKAGES := make g++ pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist
APT_EXTRA ?=
VENV := .venv
VENV_FLAGS ?=
EXTRAS ?= [dev]
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the container image `make image` builds; sweeps/cluster/*.yaml name the same (tests check it)
IMAGE ?= ghcr.io/your-org/mpcl:ray-2.60.0

.PHONY: setup system-packages venv install-wheel demo test test-fast mutate lint docs image clean

setup: system-packages venv

# Debian system libraries FFCV builds against, and Fashion-MNIST; only when apt is here and we
# are root. The Dockerfile runs this target too (APT_EXTRA: packages only the image needs).
system-packages:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES) $(APT_EXTRA); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else \
	  echo "not root or no apt-get: make sure $(APT_PACKAGES) (or their equivalents) are installed"; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".$(EXTRAS)"
	@touch $(STAMP)

# mpcl installed as a package, not editable: the wheel built from this tree, into VENV (the
# container image does this; a checkout is not needed afterwards). DIST: where the wheel goes.
DIST ?= dist
install-wheel:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	rm -rf build $(DIST)
	$(PY) -m pip wheel -q --no-deps -w $(DIST) .
	$(PY) -m pip install -q $(DIST)/mpcl-*.whl

demo: setup
	$(PY) run.py demo

test: lint
	$(PY) -m pytest -q --durations=25   # the 25 slowest tests: where the suite's time goes

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ray"

# mutation testing ([tool.mutmut] in pyproject.toml): mutants of the losses, methods, evaluation
# and optimiser against the unit tests (about 10 min on 2 cores), not part of `make test`
mutate: setup
	$(PY) -m mutmut run --max-children $$(nproc)
	$(PY) tests/mutation_summary.py

# ruff, the import contracts ([tool.ruff], [tool.importlinter] in pyproject.toml), files under
# 400 lines and functions under 60, the Dockerfile, then the docs site with every warning an
# error (its generated pages import mpcl); `make test` runs this first
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	$(PY) scripts/check_sizes.py mpcl data_prep run.py scripts docs
	$(PY) -m compileall -q mpcl data_prep run.py tests
	$(VENV)/bin/hadolint Dockerfile
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The docs site (mkdocs.yml, docs/) into site/; `mkdocs serve` shows it while you edit
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The container image (CUDA PyTorch base, mpcl installed by the steps above). Needs Docker and
# access to the base image's registry; push it where your cluster pulls from.
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) runs .pytest_cache mutants build dist site

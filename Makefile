# Set-up and checks. Everything installs into ./.venv; torch is the CPU build 2.13.0 unless
# the venv already has a torch (then it is kept). Override the interpreter with PYTHON=...
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stableeig-installed

.PHONY: install data demo test lint docs check bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[bench,dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package where we can install it; otherwise the demo falls back
# to the 4,000-image subset shipped inside the package.
data:
	@test -d /usr/share/datasets/fashion-mnist || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || true; \
	  fi; }
	@test -d /usr/share/datasets/fashion-mnist || echo "note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist); using the embedded subset"

demo: $(STAMP) data
	$(VENV)/bin/stableeig demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# The documentation site (build/site): the pages in docs/, the gallery of examples/ and the
# API reference from the docstrings (mkdocs-material, mkdocstrings); any warning (a broken
# link or anchor, a docstring that does not parse) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

check: test lint docs

bench: $(STAMP)
	$(PY) benchmarks/precision.py
	$(VENV)/bin/stableeig bench gradients
	$(VENV)/bin/stableeig bench speed

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

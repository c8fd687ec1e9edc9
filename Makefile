# haloprune — two commands: `make run` (the main comparison) and `make test`.
# Each does all set-up itself: a .venv with the package and its test extras, and the data.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS   ?=

.PHONY: run test test-all lint data venv docs wheel-test clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Real Fashion-MNIST from Debian's dataset-fashion-mnist, unless the user points HALOPRUNE_DATA elsewhere.
data:
	@if [ -z "$$HALOPRUNE_DATA" ] && [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist', set HALOPRUNE_DATA," \
	         "or use 'haloprune data download fashion-mnist'"; \
	  fi; \
	fi

run: $(STAMP) data
	$(VENV)/bin/haloprune run $(ARGS)

test: $(STAMP) data
	$(PY) -m pytest -q $(ARGS)

# Everything, the slow end-to-end tests included (what .ci/run does).
test-all: $(STAMP) data
	$(PY) -m pytest -q -m "" $(ARGS)

# The docs site (MkDocs), strict: a broken link, a bad reference or a warning fails it. Output: site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Build the sdist and the wheel, install the wheel (not the checkout) into a fresh virtual environment
# and smoke-test it there. The environment borrows the project environment's installed dependencies
# through a path file (a plain path: none of its .pth files run, so haloprune itself is only the wheel).
WHEEL_VENV := build/wheel-venv
wheel-test: $(STAMP)
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m build --no-isolation --outdir dist . >/dev/null
	$(PY) -m venv --without-pip $(WHEEL_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	  > "$$($(WHEEL_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/deps.pth"
	$(PY) -m pip --python $(WHEEL_VENV)/bin/python install -q --no-deps dist/haloprune-*.whl
	cd build && ../$(WHEEL_VENV)/bin/python ../tests/wheel_smoke.py
	tar -tzf dist/haloprune-*.tar.gz | grep -q 'src/haloprune/configs/main.toml'

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .pytest_cache

# sxlab developer commands.  `make demo` and `make test` work from a fresh clone on a
# machine with only python3: the virtual environment is created on first use.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?= -n 2

VPY := $(VENV)/bin/python
PYPROJECT_HASH := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:12])")
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(PYPROJECT_HASH)
LINT_PATHS := $(wildcard sxlab tests benchmarks)

.PHONY: venv services demo test bench lab clean distclean

venv: $(STAMP)

$(STAMP):
	@set -e; \
	if ! $(VPY) -m pip --version >/dev/null 2>&1; then \
		rm -rf $(VENV); \
		echo "creating $(VENV) with $(PYTHON)"; \
		if ! $(PYTHON) -m venv $(VENV); then \
			rm -rf $(VENV); \
			if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
				echo "$(PYTHON) -m venv failed; installing python3-venv with apt-get"; \
				DEBIAN_FRONTEND=noninteractive apt-get update -q; \
				DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
				$(PYTHON) -m venv $(VENV); \
			else \
				echo "error: '$(PYTHON) -m venv' failed." >&2; \
				echo "On Debian/Ubuntu install the venv module first:  sudo apt-get install python3-venv" >&2; \
				exit 1; \
			fi; \
		fi; \
	fi; \
	$(VPY) -m pip install --upgrade pip || echo "warning: could not upgrade pip; continuing" >&2; \
	$(VPY) -m pip install -e '.[test]'; \
	rm -f $(VENV)/.installed-*; \
	touch $@

demo: venv
	$(VPY) -m sxlab.demo

lab: venv
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

services:
	@bash .ci/services.sh

test: venv services
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VPY) -m pytest $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(VPY) -m pip install -e '.[test,bench]'
	touch $@

bench: $(BENCH_STAMP)
	@mkdir -p benchmarks/out
	@set -e; found=0; \
	for script in benchmarks/bench_*.py; do \
		[ -e "$$script" ] || continue; found=1; \
		echo "== $$script"; \
		SXLAB_BENCH_OUT=benchmarks/out $(VPY) "$$script"; \
	done; \
	[ "$$found" = 1 ] || echo "no benchmarks/bench_*.py scripts yet"

clean:
	rm -rf build dist .pytest_cache .ruff_cache benchmarks/out test-artefacts
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.nbconvert.ipynb' -exec rm -f {} +

# Generated and downloaded data sets (sxlab.datasets.cache_dir): SXLAB_CACHE, else the
# user cache directory.
DATA_CACHE := $(or $(SXLAB_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sxlab)

distclean: clean
	rm -rf $(VENV) $(DATA_CACHE)

# ketch developer entry points.  See README.md.
#
#   make demo    set up, then back up, list and restore a sample into a local repository
#   make test    set up, then ruff, mypy and pytest (any failure fails the target;
#                PYTEST_ARGS="-k pack" passes extra arguments to pytest,
#                PYTEST_WORKERS=0 runs it in one process)
#   make lint    ruff + mypy only
#   make bench   ketch and bup side by side (BENCH_ARGS="--scale 0.1" for a quick run)
#   make deps    Debian packages (apt-get when root, otherwise says what is missing)
#   make dist    the wheel for this platform in dist/ (scripts/install-ketch.sh installs it)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.stamp
BENCH_ARGS ?=
PYTEST_ARGS ?=
# Tests wait on servers and child processes most of the time: two workers on
# two cores took the suite from 36 to 23 minutes. Each worker starts its own
# services, so not more than four.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: venv deps test lint demo bench dist clean

# The venv is (re)built only when pyproject.toml, setup.py or the compiled
# kernel's source is newer than the stamp, so a second `make test` installs
# nothing.  The editable install builds the kernel into src/ketch/.
venv: $(STAMP)

$(STAMP): pyproject.toml setup.py src/ketch/_rollsum.c
	@echo "==> bootstrapping $(VENV) (pyproject.toml, setup.py or the kernel changed, or venv missing)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

deps:
	@bash scripts/install-deps.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# All three always run (so one CI run reports everything); any failure fails
# the target.
test: deps venv
	@rc=0; \
	echo "==> ruff check src tests bench"; $(VENV)/bin/ruff check src tests bench || rc=1; \
	echo "==> mypy"; $(VENV)/bin/mypy || rc=1; \
	echo "==> pytest -q"; $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS) || rc=1; \
	if [ $$rc -ne 0 ]; then echo "==> make test: FAILED (see above)" >&2; fi; \
	exit $$rc

demo: deps venv
	@bash scripts/demo.sh

bench: deps venv
	$(VENV)/bin/python bench/bench.py $(BENCH_ARGS)

# The wheel carries the compiled kernel for this machine's Python and platform
# (cp311-linux_x86_64 here), so targets with that Python need no compiler.
# pip builds in build/, which setuptools never prunes: a module deleted since
# the last build would ship, hence the rm.  The old wheel goes too, so
# dist/ketch-*.whl names one file.  The kernel is optional in setup.py (an
# install without a compiler falls back to numpy); a wheel for a fleet must
# not lose it silently, so its absence fails the target (grep without -q: an
# early exit would break zipfile's pipe, and pipefail would call that a miss).
dist: venv
	rm -rf build dist/ketch-*.whl
	$(VENV)/bin/pip wheel --disable-pip-version-check -q --no-deps -w dist .
	@whl=$$(ls dist/ketch-*.whl); \
	if ! $(VENV)/bin/python -m zipfile -l "$$whl" | grep 'ketch/_rollsum\..*\.so' >/dev/null; then \
	    echo "make dist: $$whl has no compiled ketch/_rollsum (gcc and python3-dev missing? make deps)" >&2; \
	    exit 2; \
	fi; \
	echo "==> $$whl ($$(du -k "$$whl" | cut -f1) KiB)"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info build dist src/ketch/*.so

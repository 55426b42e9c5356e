# hpsearch: `make demo` runs the whole product on this machine; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# These pins install from local wheel files on the project's machines (no download).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Test processes side by side (pytest-xdist): most tests wait on real servers and workers, so
# more processes than cores pays; TEST_WORKERS=0 runs them in this process (for pdb).
TEST_WORKERS ?= 4
# --maxschedchunk 2: each test process takes two tests at a time from the front of the queue
# (xdist's default hands out long runs of consecutive tests), so the slow tests, sorted first
# (tests/conftest.py), spread over all processes at the start and the short ones fill in.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --maxschedchunk 2
# Some machines set PYTHONDONTWRITEBYTECODE: then every server, worker and CLI process the
# tests start compiles the project again, and pytest rewrites every test module again in each
# test process (about a tenth of `make test-fast`'s CPU).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install test test-fast lint demo serve bench clean

$(BIN)/hpsearch: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[server,worker,s3,dev]'
	touch $(BIN)/hpsearch

install: $(BIN)/hpsearch

test: install
	$(PYTEST) tests

# Everyday work: no real training, no browser, the API tests on SQLite only (`make test` and CI
# run them on PostgreSQL too; FAST_BACKENDS=sqlite,postgresql here does as well).
FAST_BACKENDS ?= sqlite
test-fast: install
	HPSEARCH_TEST_BACKENDS=$(FAST_BACKENDS) $(PYTEST) -m "not slow and not browser" tests

# The protocol benchmark against a throwaway server (bench/RESULTS.md lists the others).
bench: install
	$(BIN)/python -m bench.protocol_overhead

lint: install
	$(BIN)/ruff check service worker cli tests bench
	$(BIN)/ruff format --check service worker cli tests bench

demo: install
	$(BIN)/hpsearch demo

serve: install
	$(BIN)/hpsearch serve

clean:
	rm -rf $(VENV) .hpsearch *.egg-info

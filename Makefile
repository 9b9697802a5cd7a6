# Every target works on a fresh clone: the virtual environment is created on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint format bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers, one test file each at a time (module fixtures are built once), the
# longest files first (tests/conftest.py): on 2 cores the suite takes ~2/3 of the time of
# one process, which mostly waits on single-threaded XLA compiles. TEST_WORKERS=0 runs it
# in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) -m hyper.hypernets.demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench all

# The documentation site (mkdocs.yml) into site/, offline and strict: a broken link or a
# missing reference fails it. The notebooks run at SMOKE=1 sizes while it builds. The docs
# extra is installed on first use.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --clean

clean:
	rm -rf $(VENV) demo_out .pytest_cache site

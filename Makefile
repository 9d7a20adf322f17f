# Two commands for a new machine: `make demo` and `make test`. Both install first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
STAMP := $(VENV)/.nexsearch-installed
DEMO_BUDGET ?= 2m
DEMO_EVALUATE ?= --top 3 --seeds 2

.PHONY: install test demo clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; each pip step skips what is already installed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[test]'
	# DeepCAVE 1.4.1 (analysis only): it declares Python <3.11 and pins old packages, but its
	# evaluators work on 3.11 with pyrfr built from source against swig 4.0.2.
	$(PIP) swig==4.0.2
	$(PY) -c "import pyrfr" 2>/dev/null || PATH="$(abspath $(VENV))/bin:$$PATH" $(PIP) --no-build-isolation pyrfr==0.9.0
	$(PIP) --no-deps --ignore-requires-python deepcave==1.4.1 jsonlines
	touch $(STAMP)

# Two pytest-xdist workers (one torch thread each), one test file per worker at a time; then the few
# timing-sensitive tests (marked serial) alone, so that no other test's training delays their clocks.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(PY) -m pytest -q -m serial

# A real search on offline data (scikit-learn's digits), then its best configurations and the presets
# re-trained with new seeds (validation and test error, the winner); every demo gets a fresh run directory.
demo: install
	out=runs/digits-demo-$$(date +%Y%m%d-%H%M%S) && \
	$(VENV)/bin/nexsearch run --config experiments/digits_demo.yaml --budget $(DEMO_BUDGET) --out $$out && \
	$(VENV)/bin/nexsearch evaluate $$out $(DEMO_EVALUATE)

clean:
	rm -rf $(VENV) .pytest_cache

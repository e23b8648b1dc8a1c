# musicrec: parameterised notebooks chained by papermill.
# `make help` lists the targets. Every stage takes PARAMS=params/<profile>.yaml and,
# for a real source, DATA_PATH=<raw folder>. Make reruns only stale stages.

PARAMS    ?= params/default.yaml
DATA_PATH ?=
PYTHON    ?= $(shell command -v python3.11 || command -v python3)
VENV      ?= .venv
PY        := $(VENV)/bin/python
# SKIP_SETUP=1 uses VENV as it is (the tests run make in a copy of the project this way)
READY     := $(if $(filter 1,$(SKIP_SETUP)),,$(VENV)/.installed)

# The run name: the profile's run_name, or its file name without .yaml
RUN := $(shell sed -n 's/^run_name:[[:space:]]*["'\'']\{0,1\}\([A-Za-z0-9_.-]*\).*/\1/p' $(PARAMS) 2>/dev/null)
RUN := $(if $(RUN),$(RUN),$(basename $(notdir $(PARAMS))))
STAMPS := outputs/$(RUN)/.stamps
# the stages' code: the service does not feed the pipeline, so editing it reruns no stage
PACKAGE := $(shell find src/musicrec -name '*.py' -not -path 'src/musicrec/service/*' 2>/dev/null)
# the A/B replay (06_ab_test) drives the service, so its code counts there
SERVICE := $(shell find src/musicrec/service -name '*.py' 2>/dev/null)
STAGE = $(PY) -m musicrec stage --params $(PARAMS) --data-path "$(DATA_PATH)"

.DEFAULT_GOAL := help
.PHONY: help setup all data eda candidates ranking evaluate abtest results report screenshot serve bench-service lab test lint bench bench-als clean always

help: ## list the targets with one line each
	@echo "musicrec: make <target> [PARAMS=params/<profile>.yaml] [DATA_PATH=<raw folder>]"
	@grep -E '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

setup: $(READY) ## create .venv, install the project and register the Jupyter kernel

ifneq ($(READY),)
$(READY): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --prefix $(VENV) --name musicrec --display-name "musicrec (.venv)" >/dev/null
	@touch $@
endif

all: report ## set up if needed, then the whole pipeline, ending with the HTML reports

# The data stage records the DATA_PATH it ran with; a different one makes it stale.
DATA_PATH_USED := $(shell cat $(STAMPS)/data_path 2>/dev/null)
DATA_STALE := $(if $(filter-out x$(DATA_PATH_USED),x$(DATA_PATH)),always)

$(STAMPS)/01_data: notebooks/01_data.ipynb $(PARAMS) $(PACKAGE) $(DATA_STALE) | $(READY)
	$(STAGE) 01_data
	@mkdir -p $(STAMPS) && echo '$(DATA_PATH)' > $(STAMPS)/data_path
	@touch $@

$(STAMPS)/02_eda: notebooks/02_eda.ipynb $(PARAMS) $(PACKAGE) $(STAMPS)/01_data | $(READY)
	$(STAGE) 02_eda
	@touch $@

$(STAMPS)/03_candidates: notebooks/03_candidates.ipynb $(PARAMS) $(PACKAGE) $(STAMPS)/01_data | $(READY)
	$(STAGE) 03_candidates
	@touch $@

$(STAMPS)/04_ranking: notebooks/04_ranking.ipynb $(PARAMS) $(PACKAGE) $(STAMPS)/03_candidates | $(READY)
	$(STAGE) 04_ranking
	@touch $@

$(STAMPS)/05_evaluation: notebooks/05_evaluation.ipynb $(PARAMS) $(PACKAGE) $(STAMPS)/04_ranking | $(READY)
	$(STAGE) 05_evaluation
	@touch $@

# On demand only, not part of `all`: the test window replayed through the service as an A/B test.
# Its HTML report is rendered with the others (the index page shows its table and verdict).
# ABTEST="max_users=null seed=7" sets names of the notebook's parameters cell (and always reruns it).
ABTEST ?=
$(STAMPS)/06_ab_test: notebooks/06_ab_test.ipynb $(PARAMS) $(PACKAGE) $(SERVICE) $(STAMPS)/04_ranking $(if $(ABTEST),always) | $(READY)
	$(STAGE) 06_ab_test $(foreach p,$(ABTEST),--param '$(p)')
	$(PY) -m musicrec report --params $(PARAMS) --data-path "$(DATA_PATH)"
	@touch $@

outputs/$(RUN)/reports/index.html: $(STAMPS)/01_data $(STAMPS)/02_eda $(STAMPS)/03_candidates $(STAMPS)/04_ranking $(STAMPS)/05_evaluation | $(READY)
	$(PY) -m musicrec report --params $(PARAMS) --data-path "$(DATA_PATH)"

data: $(STAMPS)/01_data ## generate or adapt the data, check it, split it (data/<run>/)
eda: $(STAMPS)/02_eda ## exploratory analysis and calibration (plots/<run>/)
candidates: $(STAMPS)/03_candidates ## fit every candidate generator on history and on history + labels
ranking: $(STAMPS)/04_ranking ## CatBoost over the merged candidates: outputs/<run>/recommendations.parquet
evaluate: $(STAMPS)/05_evaluation ## every model on the test window with intervals: outputs/<run>/metrics.parquet
abtest: $(STAMPS)/06_ab_test ## replay the test window through the service as an A/B test (ABTEST="max_users=null")
report: outputs/$(RUN)/reports/index.html ## HTML reports without code (outputs/<run>/reports/)

HOST    ?= 127.0.0.1
PORT    ?= 8000
WORKERS ?= 1
serve: | $(READY) ## serve the run's recommendations on $(HOST):$(PORT) (API docs at /docs)
	$(PY) -m musicrec.service --params $(PARAMS) --host $(HOST) --port $(PORT) --workers $(WORKERS)

CLIENT  ?= auto
bench-service: | $(READY) ## load-test a running service (make serve first): 32 connections for 30 s (CLIENT=wrk|python)
	$(PY) -m musicrec.service.loadtest --params $(PARAMS) --url http://$(HOST):$(PORT) --seconds 30 \
		--concurrency 32 --client $(CLIENT) --out outputs/$(RUN)/service/bench.json

RESULT_RUNS ?= default ium movielens lastfm
results: $(READY) ## rewrite the README's results table from outputs/<run>/metrics.json (RESULT_RUNS)
	$(PY) -m musicrec results $(RESULT_RUNS)

screenshot: outputs/$(RUN)/reports/index.html ## the index page as headless Chromium renders it: reports/index.png
	$(PY) -m musicrec report --params $(PARAMS) --data-path "$(DATA_PATH)" --screenshot

lab: $(READY) ## JupyterLab with the project's kernel
	$(VENV)/bin/jupyter lab --notebook-dir=.

test: $(READY) ## set up if needed, then the whole test suite (with an end-to-end tiny run)
	$(PY) -m pytest

lint: $(READY) ## ruff over the package, tests and notebooks
	$(VENV)/bin/ruff check .

bench: $(READY) ## run the profile's stages afresh; time and peak memory per stage and step to outputs/<run>/bench.json
	$(PY) -m musicrec bench --params $(PARAMS) --data-path "$(DATA_PATH)" $(if $(STAGES),--stages $(STAGES))

# the runs to compare, smallest first; a run without outputs/<run>/bench.json is left out with a note
BENCH_RUNS ?= default scale10 full
.PHONY: bench-readme
bench-readme: $(READY) ## rewrite the README's benchmark tables from outputs/<run>/bench.json (BENCH_RUNS)
	$(PY) -m musicrec bench-tables $(BENCH_RUNS)

ALS_VARIANTS ?= users warm full full:8
bench-als: | $(READY) ## ALS refit variants side by side: fit time, NDCG@10 (ALS_VARIANTS="users full:5")
	$(PY) -m musicrec.candidates.compare --params $(PARAMS) $(ALS_VARIANTS)

always:

clean: ## remove the run's data, outputs and plots (PARAMS selects the run)
	rm -rf data/$(RUN) outputs/$(RUN) plots/$(RUN)


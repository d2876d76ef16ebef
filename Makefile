# mixnb: every target installs into .venv first when pyproject.toml changed (stamp keyed on its hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell sha1sum pyproject.toml | cut -c1-16)

PROFILE ?= sample
METHODS ?=
BACKBONES ?=
SEEDS ?=
EPOCHS ?=
ALPHAS ?=
SET ?=
ARGS ?=
GRID ?=
DRY_RUN ?=
ANALYSIS ?= 1
GPUS ?=
GPUS_PER_RUN ?= 1
RUNS_PER_GPU ?= 1
CPU_JOBS ?=
EXECUTOR ?= local-slots
PARTITION ?=
ACCOUNT ?=
QOS ?=
TIME ?=
WAIT ?= 1
BENCH_ARGS ?=
export MIXNB_DATA

SWEEP_ARGS = --profile $(PROFILE) \
	$(if $(METHODS),--methods $(METHODS)) \
	$(if $(BACKBONES),--backbones $(BACKBONES)) \
	$(if $(SEEDS),--seeds $(SEEDS)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(ALPHAS),--alphas $(ALPHAS)) \
	$(if $(SET),--set $(SET)) \
	$(if $(ARGS),--arg $(ARGS)) \
	$(if $(GRID),--grid $(GRID)) \
	$(if $(filter-out 0,$(DRY_RUN)),--dry-run) \
	$(if $(filter 0,$(ANALYSIS)),--no-analysis) \
	$(if $(GPUS),--gpus $(GPUS)) \
	$(if $(CPU_JOBS),--cpu-jobs $(CPU_JOBS)) \
	--gpus-per-run $(GPUS_PER_RUN) --runs-per-gpu $(RUNS_PER_GPU) --executor $(EXECUTOR) --wait $(WAIT) \
	$(if $(PARTITION),--partition $(PARTITION)) \
	$(if $(ACCOUNT),--account $(ACCOUNT)) \
	$(if $(QOS),--qos $(QOS)) \
	$(if $(TIME),--time $(TIME))

.PHONY: install sweep report analyze test test-fast bench lab
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name mixnb --display-name "Python (mixnb)" >/dev/null
	@# the kernel's own log at ERROR: papermill runs it on loopback TCP, whose "without encryption" warning is noise
	$(PY) -m mixnb.paths --quiet-kernel
	@# .gitattributes names the filter; git needs its command (a clone has no local config)
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git config filter.nbstripout.clean "$(abspath $(VENV))/bin/nbstripout --keep-id" && \
		git config filter.nbstripout.smudge cat && git config filter.nbstripout.required true && \
		git config diff.ipynb.textconv "$(abspath $(VENV))/bin/nbstripout --keep-id -t"; fi
	@rm -f $(VENV)/.stamp-*
	@touch $@

# A failed run does not stop the others; the report renders what finished, then make fails.
sweep: $(STAMP)
ifneq ($(filter-out 0,$(DRY_RUN)),)
	$(PY) -m mixnb sweep $(SWEEP_ARGS)
else ifeq ($(WAIT),0)
	$(PY) -m mixnb sweep $(SWEEP_ARGS)
	@echo "WAIT=0: the jobs run on; 'make report PROFILE=$(PROFILE)' renders the runs that have finished"
else
	$(PY) -m mixnb sweep $(SWEEP_ARGS); rc=$$?; \
	$(MAKE) --no-print-directory report PROFILE=$(PROFILE) && exit $$rc
endif

report: $(STAMP)
	$(PY) -m mixnb report --profile $(PROFILE)

analyze: $(STAMP)
	$(PY) -m mixnb analyze --profile $(PROFILE)

# -n auto: one pytest worker per core, each with its share of the cores as torch threads (tests/conftest.py)
test: $(STAMP)
	$(PY) -m pytest -n auto

test-fast: $(STAMP)  # the unit tests: everything but the end-to-end ones (marked slow)
	$(PY) -m pytest -n auto -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m mixnb.bench $(BENCH_ARGS)

LAB_PORT ?= 8888
# Rooted at the repo (notebooks/, runs/ and reports/ in reach); no browser, so it works on a remote GPU box:
# open the printed URL, through `ssh -L $(LAB_PORT):localhost:$(LAB_PORT) HOST` from your machine.
lab: $(STAMP)
	@echo "JupyterLab on port $(LAB_PORT): open the http://localhost:$(LAB_PORT)/lab?token=... URL printed below"
	$(VENV)/bin/jupyter lab --notebook-dir=. --no-browser --port=$(LAB_PORT) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# Wheels the lent GPU machines lack (papermill, nbclient, ipykernel, submitit, gco-wrapper), for their Python 3.12,
# into .cache/gpu-wheels (carry it on a device call; scripts/gpu_wheels.sh says what and why).
.PHONY: gpu-wheels
gpu-wheels:
	bash scripts/gpu_wheels.sh

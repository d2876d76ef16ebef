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

# A value reaches the shell as one single-quoted word (its spaces, ; and quotes stay in it and run nothing); SET, ARGS
# and BENCH_ARGS hold several items separated by spaces, each its own word.
quote = '$(subst ','\'',$(1))'
quote_each = $(foreach item,$(1),$(call quote,$(item)))

SWEEP_ARGS = --profile $(call quote,$(PROFILE)) \
	$(if $(METHODS),--methods $(call quote,$(METHODS))) \
	$(if $(BACKBONES),--backbones $(call quote,$(BACKBONES))) \
	$(if $(SEEDS),--seeds $(call quote,$(SEEDS))) \
	$(if $(EPOCHS),--epochs $(call quote,$(EPOCHS))) \
	$(if $(ALPHAS),--alphas $(call quote,$(ALPHAS))) \
	$(if $(SET),--set $(call quote_each,$(SET))) \
	$(if $(ARGS),--arg $(call quote_each,$(ARGS))) \
	$(if $(GRID),--grid $(call quote,$(GRID))) \
	$(if $(filter-out 0,$(DRY_RUN)),--dry-run) \
	$(if $(filter 0,$(ANALYSIS)),--no-analysis) \
	$(if $(GPUS),--gpus $(call quote,$(GPUS))) \
	$(if $(CPU_JOBS),--cpu-jobs $(call quote,$(CPU_JOBS))) \
	--gpus-per-run $(call quote,$(GPUS_PER_RUN)) --runs-per-gpu $(call quote,$(RUNS_PER_GPU)) \
	--executor $(call quote,$(EXECUTOR)) --wait $(call quote,$(WAIT)) \
	$(if $(PARTITION),--partition $(call quote,$(PARTITION))) \
	$(if $(ACCOUNT),--account $(call quote,$(ACCOUNT))) \
	$(if $(QOS),--qos $(call quote,$(QOS))) \
	$(if $(TIME),--time $(call quote,$(TIME)))

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

# A failed run does not stop the others; the report renders what finished, then make fails. No $(MAKE) in the
# recipe: make -n would run it (a real sweep) instead of printing it.
sweep: $(STAMP)
ifneq ($(filter-out 0,$(DRY_RUN)),)
	$(PY) -m mixnb sweep $(SWEEP_ARGS)
else ifeq ($(WAIT),0)
	$(PY) -m mixnb sweep $(SWEEP_ARGS)
	@echo $(call quote,WAIT=0: the jobs run on; 'make report PROFILE=$(PROFILE)' renders the runs that have finished)
else
	$(PY) -m mixnb sweep $(SWEEP_ARGS); rc=$$?; \
	$(PY) -m mixnb report --profile $(call quote,$(PROFILE)) && exit $$rc
endif

report: $(STAMP)
	$(PY) -m mixnb report --profile $(call quote,$(PROFILE))

analyze: $(STAMP)
	$(PY) -m mixnb analyze --profile $(call quote,$(PROFILE))

# -n auto: one pytest worker per core, each with its share of the cores as torch threads (tests/conftest.py);
# --dist loadgroup: a module marked xdist_group (costly module fixtures: DDP, bench, analysis) stays on one worker
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadgroup

test-fast: $(STAMP)  # the unit tests: everything but the end-to-end ones (marked slow)
	$(PY) -m pytest -n auto --dist loadgroup -m "not slow"

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m mixnb.bench $(call quote_each,$(BENCH_ARGS))

LAB_PORT ?= 8888
# Rooted at the repo (notebooks/, runs/ and reports/ in reach); no browser, so it works on a remote GPU box:
# open the printed URL, through `ssh -L $(LAB_PORT):localhost:$(LAB_PORT) HOST` from your machine.
lab: $(STAMP)
	@echo "JupyterLab on port $(LAB_PORT): open the http://localhost:$(LAB_PORT)/lab?token=... URL printed below"
	$(VENV)/bin/jupyter lab --notebook-dir=. --no-browser --port=$(call quote,$(LAB_PORT)) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# Wheels the lent GPU machines lack (papermill, nbclient, ipykernel, submitit, gco-wrapper), for their Python 3.12,
# into .cache/gpu-wheels (carry it on a device call; scripts/gpu_wheels.sh says what and why).
.PHONY: gpu-wheels
gpu-wheels:
	bash scripts/gpu_wheels.sh

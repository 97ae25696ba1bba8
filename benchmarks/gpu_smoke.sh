#!/usr/bin/env bash
# GPU smoke check, for a machine with CUDA: the smoke study in bf16 on the GPU, then
# tokens/s of plain vs steered generation. Usage: bash benchmarks/gpu_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" benchmarks/gpu_throughput.py
"$PY" -m steering_utils.runner --params params/smoke-gpu.yaml --runs-root /tmp/gpu-smoke/runs \
  --reports-root /tmp/gpu-smoke/reports

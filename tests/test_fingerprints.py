"""Keys hold the files each loader reads, nothing else (issue 20, item 3): a runs root, logs
or other models inside a model folder never change a key while a run writes there; an edit
of a file the loader reads always does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import SMOKE, build_tiny_qwen3

from steering_utils import artifacts
from steering_utils.artifacts import (
    StageDir,
    dataset_files,
    file_fingerprint,
    model_files,
    stage_key,
    write_json,
)
from steering_utils.params import load_params, parse_params
from tests.test_params import _default

MODEL_STAGES = ("02_baseline", "03_activations", "04_vectors", "05_sweep", "06_report")


def _keys(params) -> dict[str, str]:
    return {stage: stage_key(params, stage) for stage in MODEL_STAGES}


def _local_model(folder: Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _params(model_folder: Path, **model):
    raw = _default()
    raw["model"] = {"name": "tiny", "source": "local", "path": str(model_folder), **model}
    return parse_params(raw)


def _clutter(folder: Path) -> None:
    """What shares a model folder in practice: a runs root being written, logs, another
    model, notes, a hidden cache."""
    run = folder / "runs" / "smoke" / "02_baseline" / "abc"
    run.mkdir(parents=True)
    (run / "generations.parquet").write_bytes(b"x" * 100)
    (run / "done.json").write_text("{}")
    (folder / "logs").mkdir()
    (folder / "logs" / "train.log").write_text("step 1\n")
    (folder / "other-model").mkdir()
    (folder / "other-model" / "model.safetensors").write_bytes(b"y" * 100)
    (folder / "other-model" / "config.json").write_text("{}")
    (folder / "README.md").write_text("my model\n")
    (folder / "notes.log").write_text("x")
    (folder / "other.gguf").write_bytes(b"GGUF")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("x")


def test_a_model_folder_is_keyed_by_the_files_transformers_reads(tmp_path, tiny_qwen3,
                                                                   tiny_tokenizer):
    folder = _local_model(tmp_path / "model", tiny_qwen3, tiny_tokenizer)
    saved = {p.name for p in folder.iterdir()}
    assert set(model_files(folder)) == saved  # everything save_pretrained wrote is read
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= saved
    params = _params(folder)
    before = _keys(params)
    assert stage_key(params, "01_data") == stage_key(parse_params(_default()), "01_data")

    _clutter(folder)  # main: every model stage rekeys
    assert _keys(params) == before
    assert set(model_files(folder)) == saved

    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    after_config = _keys(params)
    assert all(after_config[s] != before[s] for s in MODEL_STAGES)

    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer["model_max_length"] = 77
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    after_tokenizer = _keys(params)
    assert after_tokenizer["02_baseline"] != after_config["02_baseline"]

    build_tiny_qwen3(len(tiny_tokenizer), seed=1).save_pretrained(folder)  # other weights
    assert _keys(params)["02_baseline"] != after_tokenizer["02_baseline"]


def test_generation_shards_are_keyed_by_the_local_model_files_too(tmp_path, tiny_qwen3,
                                                                  tiny_tokenizer):
    """02 re-keys when the weights at model.path change; its shards must too, or the new
    02 would read back rows the old weights generated."""
    import pandas as pd

    from steering_utils.generation import make_jobs
    from steering_utils.jobs import plan_shards

    folder = _local_model(tmp_path / "model", tiny_qwen3, tiny_tokenizer)
    params = _params(folder)
    prompts = pd.DataFrame({"prompt_id": ["p0", "p1"], "text": ["the cat", "a dog"]})
    jobs = make_jobs(prompts, [(-1, 0.0)], samples=2)

    def shard_keys():
        return {key for key, _ in plan_shards(jobs, params, {}, "all")}

    before = shard_keys()
    _clutter(folder)
    assert shard_keys() == before
    build_tiny_qwen3(len(tiny_tokenizer), seed=2).save_pretrained(folder)
    assert not shard_keys() & before
    # Hub ids and the offline model have no local files: their shard keys are as before.
    from steering_utils.jobs import RECIPE_FIELDS

    assert artifacts.input_files(parse_params(_default()), RECIPE_FIELDS) == {}


def test_sharded_weights_are_keyed_by_the_shards_their_index_names(tmp_path, tiny_qwen3,
                                                                    tiny_tokenizer):
    folder = tmp_path / "model"
    tiny_qwen3.save_pretrained(folder, max_shard_size="100KB")
    tiny_tokenizer.save_pretrained(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and set(shards) <= set(model_files(folder))
    params = _params(folder)
    before = stage_key(params, "02_baseline")
    (folder / "model-99999-of-99999.safetensors").write_bytes(b"not in the index")
    assert stage_key(params, "02_baseline") == before
    last = folder / shards[-1]
    last.write_bytes(last.read_bytes()[:-1] + b"\0")
    assert stage_key(params, "02_baseline") != before


def test_a_gguf_model_is_keyed_by_its_gguf_file_and_tokenizer_files_only(tmp_path):
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "mine.Q4.gguf").write_bytes(b"GGUF mine")
    (folder / "other.Q8.gguf").write_bytes(b"GGUF other")
    params = _params(folder, source="gguf", gguf_file="mine.Q4.gguf")
    assert model_files(folder, "mine.Q4.gguf") == ["mine.Q4.gguf"]
    before = stage_key(params, "02_baseline")
    _clutter(folder)
    (folder / "other.Q8.gguf").write_bytes(b"GGUF other, requantised")
    (folder / "config.json").write_text("{}")  # transformers reads the GGUF's own config
    assert stage_key(params, "02_baseline") == before
    # AutoTokenizer still reads a tokenizer_config.json beside the GGUF.
    (folder / "tokenizer_config.json").write_text("{}")
    with_tokenizer = stage_key(params, "02_baseline")
    assert with_tokenizer != before
    (folder / "mine.Q4.gguf").write_bytes(b"GGUF mine, requantised")
    assert stage_key(params, "02_baseline") != with_tokenizer


def test_files_over_64_mib_are_keyed_by_size_and_mtime_smaller_ones_by_content(
        tmp_path, monkeypatch):
    """The trade-off, shown on small files with the threshold lowered: content hashing 16 GB
    of Qwen3-8B weights at every key computation is too slow, so big files go by stat."""
    monkeypatch.setattr(artifacts, "BIG_FILE_BYTES", 16)
    big, small = tmp_path / "big.safetensors", tmp_path / "config.json"
    big.write_bytes(b"a" * 32)
    small.write_bytes(b"a" * 8)
    stamp = (time.time() - 100, time.time() - 100)
    os.utime(big, stamp)
    os.utime(small, stamp)
    prints = file_fingerprint(big), file_fingerprint(small)
    big.write_bytes(b"b" * 32)
    small.write_bytes(b"b" * 8)
    os.utime(big, stamp)
    os.utime(small, stamp)
    assert file_fingerprint(big) == prints[0]  # same size and mtime: taken as unchanged
    assert file_fingerprint(small) != prints[1]  # content, whatever the mtime says
    os.utime(big, None)
    assert file_fingerprint(big) != prints[0]  # a new mtime (a copy, a download)
    assert file_fingerprint(tmp_path / "nope") == "missing"


def test_a_dataset_folder_is_keyed_by_the_data_files_datasets_loads(tmp_path):
    from tests.test_data import _write_rtp

    folder = tmp_path / "rtp"
    folder.mkdir()
    _write_rtp(folder)
    raw = _default()
    raw["data"]["rtp_dataset"] = str(folder)
    raw["data"]["challenging"] = {"source": "rtp_hub", "n_train": 5, "n_dev": 5, "n_eval": 10}
    raw["activations"]["min_pairs"] = 2  # 5 train prompts feed the paired contrast
    params = parse_params(raw)
    before = stage_key(params, "01_data")
    assert dataset_files(folder) == ["prompts.jsonl"]
    (folder / "notes.log").write_text("x")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.jsonl").write_text("{}\n")
    assert stage_key(params, "01_data") == before
    (folder / "prompts.jsonl").write_text((folder / "prompts.jsonl").read_text() + "\n")
    assert stage_key(params, "01_data") != before
    # The folder is read only when a subset's source is rtp_hub.
    raw["data"]["challenging"] = _default()["data"]["challenging"]
    unused = stage_key(parse_params(raw), "01_data")
    (folder / "prompts.jsonl").write_text("")
    assert stage_key(parse_params(raw), "01_data") == unused


def test_a_runs_root_inside_the_model_folder_keeps_every_key_while_the_run_writes(
        tmp_path, tiny_qwen3, tiny_tokenizer):
    """main: 02 finished, then 03 stopped with '02_baseline has not finished for these
    params', because 02's own files had changed the model folder's fingerprint."""
    folder = _local_model(tmp_path / "model", tiny_qwen3, tiny_tokenizer)
    params, runs = _params(folder), folder / "runs"
    for stage in ("01_data", "02_baseline"):
        opened = StageDir(runs, params, stage)
        for name in opened.spec.outputs:
            write_json({"rows": 1}, opened.out(name))
        opened.finish()
    reader = StageDir(runs, params, "03_activations")
    assert reader.input("baseline").is_file()


@pytest.mark.slow
def test_a_real_run_with_its_runs_root_inside_the_model_folder_completes(tmp_path, tiny_qwen3,
                                                                          tiny_tokenizer):
    """Stages 01-03 of the smoke params, executed by papermill as the runner does, on a local
    model folder (a tiny Qwen3, saved) that holds the runs root: main stopped at 03 with
    "02_baseline has not finished for these params"."""
    import papermill

    from steering_utils.notebooks import NOTEBOOKS, read_stage_notebook
    from steering_utils.runner import _kernel_name

    folder = _local_model(tmp_path / "model", tiny_qwen3, tiny_tokenizer)
    params_file = tmp_path / "local.yaml"
    params_file.write_text(f"inherits: {SMOKE}\nrun_name: local\n"
                           f"model: {{name: tiny, source: local, path: {folder}}}\n"
                           "sweep: {layers: [0, 1]}\n")  # the tiny model has 3 layers
    params, runs = load_params(params_file), folder / "runs"
    before = _keys(params)
    for stage in ("01_data", "02_baseline", "03_activations"):
        papermill.execute_notebook(
            read_stage_notebook(stage), str(tmp_path / f"{stage}.ipynb"),
            parameters={"params_file": str(params_file), "runs_root": str(runs),
                        "reports_root": str(tmp_path / "reports")},
            kernel_name=_kernel_name(), cwd=str(NOTEBOOKS), progress_bar=False,
            start_timeout=120)
    assert _keys(params) == before
    assert StageDir(runs, params, "03_activations").complete
    assert list(runs.glob("local/02_baseline/*/done.json"))

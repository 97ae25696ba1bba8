"""Run folders keyed by what made them, atomic writes and completion markers.

A stage writes only its own folder, `runs/<run_name>/<NN_stage>/<key>/`, where the
key (`key_parts`) hashes the params fields the stage reads (`stages.STAGES`), its
notebook's code cells and the source of the package modules it runs (`sources`), each
input stage's key and contents digest, the contents of user files it reads and the
artifact version (a manual override). So an artifact made under other params or other
code is never read back: they mean another folder. Nothing is deleted when a stage opens;
a stage becomes complete when its `done.json` marker (written last, with the key's parts
and a digest of the folder's contents that dependants' keys read) exists in its keyed
folder, and from then on its folder refuses writes. Files are written under a temporary
name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .hashing import digest
from .params import StudyParams, run_path
from .stages import (
    ARTIFACT_VERSION,
    EXECUTION_ONLY,
    RECORDS,
    SHARDS_FILE,
    STAGE_NAMES,
    STAGES,
    producer,
)

DONE_FILE = RECORDS["done"]
MANIFEST_FILE = RECORDS["manifest"]
SHARDS_DIR = "shards"  # runs/<run_name>/shards/: content-keyed generation shards
_OPEN_STAGES: list[StageDir] = []  # stages opened in this process and not yet finished


def _field(dumped: dict, dotted: str):
    value = dumped
    for part in dotted.split("."):
        value = value[part]
    return value


def params_fields(params: StudyParams, fields: tuple[str, ...]) -> dict:
    """{field: value} of dotted params fields, less the execution-only ones (batch sizes)."""
    dumped = params.model_dump(mode="json")
    for dotted in EXECUTION_ONLY:
        section, _, name = dotted.partition(".")
        if isinstance(dumped.get(section), dict):
            dumped[section].pop(name, None)
    return {dotted: _field(dumped, dotted) for dotted in fields}


# Files over this size are fingerprinted by name, size and mtime, not content: hashing
# Qwen3-8B's 16 GB of weights at every key computation (the runner and each notebook
# compute keys) would cost minutes; weights are replaced, not edited in place. Smaller
# files (configs, tokenizers, data) are hashed, once per process and file version.
BIG_FILE_BYTES = 64 * 2**20
# (path, inode, size, mtime_ns, ctime_ns) -> content hash. ctime too: a rewrite that keeps
# size and mtime (`touch -r`, `cp -p`) still moves ctime, which no user call can set.
_HASHED: dict[tuple, str] = {}

# What transformers reads from a local model folder (top level only, so a runs root,
# logs or other models inside the folder are never part of the key): the config, the
# tokenizer's files and the weights; the weights' index names the shards.
_CONFIG_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                    "chat_template.jinja", "chat_template.json", "generation_config.json")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")  # sentencepiece (tokenizer.model, spiece.model)
_CHAT_TEMPLATES_DIR = "additional_chat_templates"
_WEIGHT_FILES = (("model.safetensors", "model.safetensors.index.json"),
                 ("pytorch_model.bin", "pytorch_model.bin.index.json"))
# What `datasets` reads from a local dataset folder besides the data files it resolves.
_DATASET_METADATA = ("README.md", ".huggingface.yaml", "dataset_infos.json")


def file_fingerprint(path: str | Path) -> str:
    """Content hash of one file (name, size and mtime over BIG_FILE_BYTES); 'missing' if none."""
    path = Path(path)
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return "missing"
    if not path.is_file():
        return "not a file"
    if stat.st_size > BIG_FILE_BYTES:
        return digest({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return content_hash(path)


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, whatever its size; cached per process and file version."""
    path = Path(path)
    stat = path.stat()
    signature = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns,
                 stat.st_ctime_ns)
    if signature not in _HASHED:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _HASHED[signature] = sha.hexdigest()[:16]
    return _HASHED[signature]


def _files_fingerprint(folder: Path, names: list[str]) -> str:
    """One hash of the named files of a folder (each by file_fingerprint)."""
    return digest({name: file_fingerprint(folder / name) for name in sorted(set(names))})


def model_files(folder: str | Path, gguf_file: str | None = None) -> list[str]:
    """Names of the files transformers reads to load a model (or a scorer) from a local
    folder: config, tokenizer files and weights, or, with `gguf_file`, that GGUF file and the
    tokenizer files (AutoTokenizer still reads tokenizer_config.json beside a GGUF)."""
    folder = Path(folder)
    try:
        top = {p.name for p in folder.iterdir() if p.is_file()}
    except OSError:
        return []
    names = {n for n in top if n in _TOKENIZER_FILES or n.endswith(_TOKENIZER_SUFFIXES)}
    templates = folder / _CHAT_TEMPLATES_DIR
    if templates.is_dir():
        names |= {f"{_CHAT_TEMPLATES_DIR}/{p.name}" for p in templates.glob("*.jinja")}
    if gguf_file:
        return sorted(names | {gguf_file})
    names |= top.intersection(_CONFIG_FILES)
    for single, index in _WEIGHT_FILES:
        names |= top.intersection((single, index))
        if index in top:
            try:
                shards = json.loads((folder / index).read_text()).get("weight_map", {})
                names |= {name for name in shards.values() if isinstance(name, str)}
            except (OSError, ValueError, AttributeError):
                pass  # an unreadable index is in the key already; loading it will fail
    return sorted(names)


def dataset_files(folder: str | Path, data_dir: str | None = None) -> list[str]:
    """Names (relative to `folder`) of the files `datasets.load_dataset(folder)` reads: the
    data files it resolves for every split (it prepares them all) and the dataset card."""
    folder = Path(folder).resolve()
    try:
        from datasets import load as datasets_load

        # The factory load_dataset uses for a local folder (its name before datasets 4).
        factory = (getattr(datasets_load, "LocalDatasetModuleFactory", None)
                   or datasets_load.LocalDatasetModuleFactoryWithoutScript)
        module = factory(str(folder), data_dir=data_dir).get_module()
        files = module.builder_kwargs.get("data_files")
        if files is None:
            configs = module.builder_configs_parameters.builder_configs or []
            default = module.builder_configs_parameters.default_config_name
            chosen = [c for c in configs if c.name == default] or configs
            files = {}
            for config in chosen:
                for split, listed in (config.data_files or {}).items():
                    files[f"{config.name}/{split}"] = listed
    except Exception:  # datasets cannot say (a bad card, another API): every visible file
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                      and not any(part.startswith((".", "__"))
                                  for part in p.relative_to(folder).parts))
    names = {str(Path(f).resolve().relative_to(folder)) if Path(f).resolve().is_relative_to(
        folder) else str(Path(f).resolve()) for listed in files.values() for f in listed}
    names |= {n for n in _DATASET_METADATA if (folder / n).is_file()}
    return sorted(names)


def _model_fingerprint(spec) -> str | None:
    """Fingerprint of a model spec's local files; None for a hub id or the offline model."""
    if spec is None or not spec.path or not Path(spec.path).is_absolute():
        return None
    folder = Path(spec.path)
    return _files_fingerprint(folder, model_files(
        folder, spec.gguf_file if spec.source == "gguf" else None))


def _data_fingerprint(path: str, data_dir: str | None = None) -> str:
    """A data file's hash, or the hash of the files `datasets` reads from a data folder."""
    path = Path(path)
    if path.is_dir():
        if data_dir == "auto":  # capability.py's MMLU snapshot: all/ when the folder has it
            data_dir = "all" if (path / "all").is_dir() else None
        return _files_fingerprint(path, dataset_files(path, data_dir))
    return file_fingerprint(path)


def _external_inputs(params: StudyParams, stage: str) -> dict:
    """Fingerprints of the local files a stage reads (`input_files` of its params fields)."""
    return input_files(params, STAGES[stage].reads)


def input_files(params: StudyParams, reads: tuple[str, ...]) -> dict:
    """{field: fingerprint} of the local files that the params fields `reads` name only by
    path: the files each loader reads, never the rest of their folders (so a runs root, logs
    or other models inside a model folder do not change a key while a run writes there).
    Empty for hub ids and the offline model."""

    def read(dotted: str) -> bool:
        return any(dotted == field or dotted.startswith(field + ".") for field in reads)

    found = {}
    if read("data"):
        sources = set()
        for subset in ("challenging", "benign"):
            spec = getattr(params.data, subset)
            sources.add(spec.source)
            if spec.path and spec.source in ("jsonl", "csv"):
                found[f"data.{subset}.path"] = file_fingerprint(spec.path)
        if "rtp_hub" in sources and Path(params.data.rtp_dataset).is_absolute():
            found["data.rtp_dataset"] = _data_fingerprint(params.data.rtp_dataset)
    if read("model"):
        found["model.path"] = _model_fingerprint(params.model)
    scorer = params.scorer
    if read("scorer") and "unbiased-toxic-roberta" in (scorer.name, scorer.second) and \
            scorer.path and Path(scorer.path).is_absolute():
        found["scorer.path"] = _files_fingerprint(Path(scorer.path), model_files(scorer.path))
    if read("evaluation.reference_model"):
        found["evaluation.reference_model.path"] = _model_fingerprint(
            params.evaluation.reference_model)
    capability = params.evaluation.capability
    if read("evaluation.capability") and capability.task == "mmlu_hub" and capability.path \
            and Path(capability.path).is_absolute():
        found["evaluation.capability.path"] = _data_fingerprint(capability.path, "auto")
    return {name: value for name, value in found.items() if value is not None}


PENDING = "pending"  # the contents of an input that has not finished


def key_parts(params: StudyParams, stage: str, runs_root: str | Path | None = None,
              _memo: dict | None = None) -> dict:
    """What a stage's key hashes: the artifact version (a manual override), its params
    fields, its notebook's code cells, the source of each package module it runs
    (`sources.stage_code`), each input's key and contents digest, and local files it reads.

    Inputs' contents are read from their done markers under `runs_root`: an input not
    finished there (or no runs root) gives "pending", so keys are computed in stage order.
    """
    from .sources import stage_code

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    memo = {} if _memo is None else _memo
    if stage not in memo:
        spec = STAGES[stage]
        inputs = {}
        for name in spec.inputs:
            key = digest(key_parts(params, name, runs_root, memo))
            record = None if runs_root is None else done_record(
                Path(runs_root) / params.run_name / name / key)
            contents = PENDING if record is None or record.get("hash") != key else (
                record.get("contents", "unrecorded"))
            inputs[name] = {"key": key, "contents": contents}
        memo[stage] = {"version": ARTIFACT_VERSION,
                       "params": params_fields(params, spec.reads),
                       **stage_code(stage),
                       "inputs": inputs,
                       "files": _external_inputs(params, stage)}
    return memo[stage]


def stage_key(params: StudyParams, stage: str, runs_root: str | Path | None = None) -> str:
    """Key of a stage's folder: the digest of its `key_parts` (params, code, inputs, files)."""
    return digest(key_parts(params, stage, runs_root))


def stage_folder(runs_root: str | Path, params: StudyParams, stage: str) -> Path:
    """runs/<run_name>/<stage>/<key>/ for these params, this code and these inputs."""
    return Path(runs_root) / params.run_name / stage / stage_key(params, stage, runs_root)


def contents_digest(folder: Path) -> str:
    """Digest of a finished folder's files (names and bytes), less its done and manifest
    records: what a dependant's key holds of it. Computed once, at finish."""
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name not in (DONE_FILE, MANIFEST_FILE) \
                and not path.name.startswith("."):
            files[str(path.relative_to(folder))] = content_hash(path)
    return digest(files)


def _changed_fields(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for name in sorted(set(old) | set(new)):
            dotted = f"{prefix}.{name}" if prefix else str(name)
            if name not in old or name not in new:
                found.append(dotted)
            else:
                found += _changed_fields(old[name], new[name], dotted)
        return found
    return [] if old == new else [prefix or "value"]


def key_changes(old: dict | None, new: dict) -> list[str]:
    """Why a stage's key moved, part by part ("notebook changed", "input 04_vectors
    changed", "params changed (generation.temperature)"); ["new"] without an old record."""
    if not old:
        return ["new"]
    reasons = []
    if old.get("version") != new.get("version"):
        reasons.append(f"ARTIFACT_VERSION changed ({old.get('version')} -> {new['version']})")
    fields = _changed_fields(old.get("params", {}), new.get("params", {}))
    if fields:
        reasons.append(f"params changed ({', '.join(fields)})")
    if old.get("notebook") != new.get("notebook"):
        reasons.append("notebook changed")
    modules = old.get("modules", {}), new.get("modules", {})
    for path in sorted(set(modules[0]) | set(modules[1])):
        if modules[0].get(path) != modules[1].get(path):
            state = ("now run" if path not in modules[0] else
                     "no longer run" if path not in modules[1] else "changed")
            reasons.append(f"module {path} {state}")
    inputs = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(inputs[0]) | set(inputs[1])):
        if inputs[0].get(name) != inputs[1].get(name):
            reasons.append(f"input {name} changed")
    for name in _changed_fields(old.get("files", {}), new.get("files", {})):
        reasons.append(f"file {name} changed")
    return reasons or ["key scheme changed"]


def last_finished(run_dir: Path, stage: str) -> dict | None:
    """The done record of the stage's most recently finished folder in a run, if any."""
    markers = sorted(Path(run_dir, stage).glob(f"*/{DONE_FILE}"),
                     key=lambda p: p.stat().st_mtime_ns)
    for marker in reversed(markers):
        record = done_record(marker.parent)
        if record is not None:
            return record
    return None


class StageFinished(RuntimeError):
    """A write into a stage folder whose done marker exists."""


class StageDir:
    """The keyed folder of one stage of one run, and the artifacts it may read."""

    def __init__(self, runs_root: str | Path, params: StudyParams, stage: str):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
        self.runs_root = Path(runs_root)
        self.run = run_path(runs_root, params.run_name)  # never outside runs_root
        self.name = stage
        self.spec = STAGES[stage]
        self.params = params
        self.parts = key_parts(params, stage, runs_root)
        self.hash = digest(self.parts)
        self.path = self.run / stage / self.hash
        self.started = time.time()
        # Opening a stage deletes nothing: other params write other folders, and
        # finished work of later stages stays valid until their inputs change. A stage
        # whose inputs have not finished gets no folder: its key is not known yet.
        if not self.pending:
            self.path.mkdir(parents=True, exist_ok=True)
        self.shards_used: set[str] = set()
        _OPEN_STAGES.append(self)

    def __repr__(self) -> str:  # what a notebook shows after opening its stage
        state = " (finished: its artifacts are read-only)" if self.complete else ""
        return f"run {self.params.run_name}, {self.name} key {self.hash} -> {self.path}{state}"

    @property
    def pending(self) -> list[str]:
        """Inputs that have not finished for these params (the key waits on them)."""
        return [name for name, part in self.parts["inputs"].items()
                if part["contents"] == PENDING]

    @property
    def complete(self) -> bool:
        return is_complete(self.path, self.hash)

    @property
    def shards(self) -> Path:
        """The run's content-keyed shard store, shared by every stage and params version."""
        return self.run / SHARDS_DIR

    def _check_writable(self) -> None:
        if (self.path / DONE_FILE).is_file():
            raise StageFinished(
                f"{self.name} is finished for these params and code (key {self.hash}); its "
                f"artifacts are read-only. To recompute, delete {self.path} and run it "
                "again, or re-run the study with `python -m steering_utils.runner --params "
                "<file> --force`")
        if self.pending:
            raise RuntimeError(f"{self.name} cannot write before its inputs finish: "
                               f"{', '.join(self.pending)}")

    def out(self, artifact: str) -> Path:
        """Path of one of this stage's own outputs, to write; raises once the stage finished
        (read a finished stage's artifacts from a later stage, through `input`)."""
        if artifact not in self.spec.outputs:
            raise KeyError(f"{self.name} does not write {artifact!r}; it writes "
                           f"{', '.join(self.spec.outputs)}")
        self._check_writable()
        return self.path / self.spec.outputs[artifact]

    def input(self, artifact: str) -> Path:
        """Path of an earlier stage's artifact; raises if that stage has not finished."""
        stage = producer(artifact)
        if stage.name not in self.spec.inputs:
            raise ValueError(f"{self.name} does not read {stage.name} (artifact {artifact!r}); "
                             f"its inputs are {', '.join(self.spec.inputs) or 'none'}")
        return self.input_folder(stage.name) / stage.outputs[artifact]

    def input_folder(self, name: str) -> Path:
        """The finished folder of an input stage; raises if it has not finished."""
        folder = self.run / name / self.parts["inputs"][name]["key"]
        if not is_complete(folder, folder.name):
            raise RuntimeError(
                f"{name} has not finished for these params (run_name "
                f"{self.params.run_name!r}, key {folder.name}); run notebooks/"
                f"{STAGES[name].notebook} first, or `make report PARAMS=...`"
            )
        return folder

    def finish(self, run: dict | None = None) -> None:
        """Write the stage's manifest and the done marker (last: its presence means complete).
        The marker records the key's parts and a digest of the folder's contents, which
        dependants' keys read. `run`: the run manifest's summary the stage manifest keeps
        (`session.NotebookStage.finish` builds it; this module builds no manifest)."""
        self._check_writable()
        seconds = round(time.time() - self.started, 2)
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"stage": self.name, "key": self.hash, "seconds": seconds,
                  "finished_utc": finished, "key_parts": self.parts}
        if run is not None:
            record["run"] = run
        write_json(record, self.path / MANIFEST_FILE)
        if SHARDS_FILE in self.spec.outputs.values():
            _write_shards_record(self)
        if self in _OPEN_STAGES:
            _OPEN_STAGES.remove(self)
        write_json({"stage": self.name, "hash": self.hash, "seconds": seconds,
                    "finished_utc": finished, "contents": contents_digest(self.path),
                    "key_parts": self.parts}, self.path / DONE_FILE)


def record_shards(shard_dir: str | Path, keys: list[str]) -> None:
    """Note shard keys as used by each open stage of this process over `shard_dir` (run_jobs
    calls it as it plans, so an interrupted stage's record is whole too)."""
    shard_dir = Path(shard_dir).resolve()
    for stage in _OPEN_STAGES:
        if stage.shards.resolve() == shard_dir and SHARDS_FILE in stage.spec.outputs.values() \
                and not stage.complete:
            stage.shards_used.update(keys)
            _write_shards_record(stage)


def _write_shards_record(stage: StageDir) -> None:
    write_json({"shards": sorted(stage.shards_used)}, stage.path / SHARDS_FILE)


def shards_record(folder: str | Path) -> set[str] | None:
    """Shard keys a stage folder recorded using; None when its stage uses shards but the folder
    has no record (made before records existed), an empty set for a stage that uses none."""
    folder = Path(folder)
    spec = STAGES.get(folder.parent.name)
    if spec is None or SHARDS_FILE not in spec.outputs.values():
        return set()
    try:
        return set(read_json(folder / SHARDS_FILE)["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(folder: Path, expected_hash: str) -> bool:
    """True when the folder's done marker carries this key."""
    marker = Path(folder) / DONE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("hash") == expected_hash
    except json.JSONDecodeError:
        return False


def done_record(folder: Path) -> dict | None:
    """The done marker of a finished stage folder (None when unfinished)."""
    marker = Path(folder) / DONE_FILE
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except json.JSONDecodeError:
        return None


def stage_seconds(folder: Path) -> float | None:
    """Seconds the stage took, from its done marker."""
    record = done_record(folder)
    return None if record is None else record.get("seconds")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write (a file or a new folder), renamed onto `path`
    when the block ends without error: a reader finds all of it or none of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    _remove(partial)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        _remove(partial)  # left only when the block failed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Parquet, written atomically."""
    with atomic_path(path) as partial:
        table.to_parquet(partial, index=False)
    return Path(path)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_json(data, path: Path) -> Path:
    """JSON (NaN written as null), written atomically."""
    text = json.dumps(_nan_to_none(data), indent=2, sort_keys=False, default=str)
    with atomic_path(path) as partial:
        partial.write_text(text + "\n")
    return Path(path)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value

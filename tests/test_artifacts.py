"""The stage table and content-keyed stage folders: other params never read old artifacts,
a change re-runs exactly the stages that depend on it, and opening a stage discards nothing."""

from __future__ import annotations

import copy

import pytest

from steering_utils.artifacts import StageDir, is_complete, stage_folder, stage_key
from steering_utils.checks import check_sizes
from steering_utils.params import load_params, parse_params
from steering_utils.stages import STAGE_NAMES, STAGES, producer, upstream
from tests.test_params import PARAMS, _default

# A change in each params section, and the stages that must re-run for it (every stage
# downstream of one that reads it): the table this test holds the stage table to.
CHANGES = {
    "seed": (lambda raw: raw.update(seed=99), STAGE_NAMES),
    "data": (lambda raw: raw["data"]["challenging"].update(n_eval=41), STAGE_NAMES),
    "model": (lambda raw: raw["model"].update(dtype="float32"), STAGE_NAMES[1:]),
    "generation": (lambda raw: raw["generation"].update(temperature=0.5), STAGE_NAMES[1:]),
    "scorer": (lambda raw: raw["scorer"].update(second=None), STAGE_NAMES[1:]),
    "activations": (lambda raw: raw["activations"].update(n_per_side=30), STAGE_NAMES[2:]),
    "vectors": (lambda raw: raw["vectors"].update(normalize=True), STAGE_NAMES[3:]),
    "sweep": (lambda raw: raw["sweep"].update(alphas=[-1.0, 0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0]),
              STAGE_NAMES[4:]),
    "control": (lambda raw: raw["control"].update(n_directions=3), STAGE_NAMES[4:]),
    "evaluation": (lambda raw: raw["evaluation"].update(max_distinct_drop=0.2),
                   STAGE_NAMES[4:]),
    "report": (lambda raw: raw["report"].update(n_examples=5), STAGE_NAMES[5:]),
}


@pytest.mark.parametrize("section", sorted(CHANGES))
def test_a_params_change_rekeys_exactly_the_dependent_stages(section):
    raw = _default()
    before = parse_params(raw)
    change, expected = CHANGES[section]
    changed = copy.deepcopy(raw)
    change(changed)
    after = parse_params(changed)
    moved = [s for s in STAGE_NAMES if stage_key(before, s) != stage_key(after, s)]
    assert moved == list(expected)


def test_execution_only_fields_and_the_run_name_do_not_rekey():
    raw = _default()
    before = parse_params(raw)
    changed = copy.deepcopy(raw)
    changed["generation"]["batch_size"] = 7
    changed["scorer"]["batch_size"] = 3
    changed["activations"]["batch_size"] = 5
    after = parse_params(changed)
    assert all(stage_key(before, s) == stage_key(after, s) for s in STAGE_NAMES)


def test_every_stage_reads_only_earlier_stages_and_every_artifact_has_one_producer():
    for position, name in enumerate(STAGE_NAMES):
        assert set(upstream(name)) <= set(STAGE_NAMES[:position])
    names = [a for stage in STAGES.values() for a in stage.outputs]
    assert len(names) == len(set(names))
    assert producer("vectors").name == "04_vectors"
    with pytest.raises(KeyError, match="unknown artifact 'nope'"):
        producer("nope")


def test_a_user_file_is_keyed_by_its_content(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "a"}\n{"text": "b"}\n')
    raw = _default()
    raw["data"]["benign"] = {"source": "jsonl", "path": str(prompts), "n_train": 0, "n_dev": 0,
                             "n_eval": 2}
    key = stage_key(parse_params(raw), "01_data")
    prompts.write_text('{"text": "a"}\n{"text": "c"}\n')  # same name, other prompts
    assert stage_key(parse_params(raw), "01_data") != key


def test_stage_folders_are_keyed_and_reading_is_refused_until_finished(tmp_path):
    params = parse_params(_default())
    stage = StageDir(tmp_path, params, "03_activations")
    assert stage.path == tmp_path / "default" / "03_activations" / stage.hash
    with pytest.raises(ValueError, match="does not read 05_sweep"):
        stage.input("grid")
    with pytest.raises(RuntimeError, match="01_data has not finished .* run notebooks/01_data"):
        stage.input("prompts")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_key(params, "07_extra")
    StageDir(tmp_path, params, "01_data").finish()
    assert stage.input("prompts").parent == stage_folder(tmp_path, params, "01_data")


def test_opening_a_stage_keeps_every_finished_stage(tmp_path):
    params = parse_params(_default())
    for name in STAGE_NAMES:
        StageDir(tmp_path, params, name).finish()
    StageDir(tmp_path, params, "03_activations")  # as executing the notebook's first cell does
    done = [n for n in STAGE_NAMES if is_complete(stage_folder(tmp_path, params, n),
                                                  stage_key(params, n, tmp_path))]
    assert done == list(STAGE_NAMES)
    # Finishing under other params writes another folder and leaves these complete too.
    raw = _default()
    raw["activations"]["n_per_side"] = 30
    other = parse_params(raw)
    StageDir(tmp_path, other, "03_activations").finish()
    assert is_complete(stage_folder(tmp_path, params, "03_activations"),
                       stage_key(params, "03_activations", tmp_path))
    assert not is_complete(stage_folder(tmp_path, other, "04_vectors"),
                           stage_key(other, "04_vectors", tmp_path))


def test_relative_paths_resolve_against_the_params_file(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "prompts.jsonl").write_text("".join(f'{{"text": "p{i}"}}\n'
                                                           for i in range(30)))
    base = (PARAMS / "default.yaml").read_text()
    (folder / "base.yaml").write_text(base.replace("run_name: default", "run_name: base"))
    # `inherits:` reaches the project, the folder holding params/ (issue 20).
    (folder / "params").mkdir()
    (folder / "params" / "p.yaml").write_text(
        "inherits: ../base.yaml\nrun_name: rel\n"
        "data:\n  benign: {source: jsonl, path: ../data/prompts.jsonl, n_train: 0, n_dev: 0, "
        "n_eval: 1}\n")
    expected = str((folder / "data" / "prompts.jsonl").resolve())
    for cwd in (tmp_path, folder / "params", PARAMS.parent / "notebooks"):
        monkeypatch.chdir(cwd)
        params = load_params(folder / "params" / "p.yaml")
        assert params.data.benign.path == expected
        assert "benign 1/30" in check_sizes(params)  # what make check and the runner read
    # Hub ids stay hub ids; ./ marks a local folder.
    raw = _default()
    assert load_params(PARAMS / "qwen3-8b.yaml").model.path == "Qwen/Qwen3-8B"
    assert raw["model"].get("path") is None


def test_atomic_path_puts_the_whole_file_or_folder_in_place_or_nothing(tmp_path):
    from steering_utils.artifacts import atomic_path

    target = tmp_path / "sub" / "table.parquet"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as partial:
            partial.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial left
    with atomic_path(target) as partial:
        partial.write_text("whole")
    assert target.read_text() == "whole" and list(target.parent.iterdir()) == [target]
    folder = tmp_path / "model"
    with atomic_path(folder) as partial:
        partial.mkdir()
        (partial / "weights").write_text("w")
    assert (folder / "weights").read_text() == "w" and not list(tmp_path.glob(".model*"))


def test_one_digest_keeps_the_keys_that_caches_were_written_under():
    """Stage keys, params hashes and the results fingerprint are one function
    (`hashing.digest`); its value is pinned, so existing caches stay valid."""
    from steering_utils import artifacts, report
    from steering_utils.hashing import digest

    assert digest({"b": [1, 2.5, None], "a": "x", "c": {"z": 1, "y": True}}) == "c57ac61ffaba4ec2"
    assert artifacts.digest is digest and report.digest is digest
    params = load_params(PARAMS / "smoke.yaml")
    dumped = params.model_dump(mode="json")
    assert params.section_hash("data", "sweep") == digest({k: dumped[k] for k in ("data", "sweep")})
    assert params.params_hash == digest(dumped)

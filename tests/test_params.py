"""Params: inheritance, and one clear error per kind of bad input, before any work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from steering_utils.checks import check_layers, check_sizes, validate_run
from steering_utils.params import ParamsError, load_params, parse_params, resolve_layers

PARAMS = Path(__file__).resolve().parent.parent / "params"


def _default() -> dict:
    return yaml.safe_load((PARAMS / "default.yaml").read_text())


def _write(tmp_path, data, name="p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["default", "smoke", "qwen3-8b"])
def test_shipped_params_load(name):
    params = load_params(PARAMS / f"{name}.yaml")
    assert params.run_name == name
    assert len(params.params_hash) == 16


def test_inheritance_merges_nested_fields():
    smoke = load_params(PARAMS / "smoke.yaml")
    default = load_params(PARAMS / "default.yaml")
    assert smoke.generation.max_new_tokens == 8
    assert smoke.generation.temperature == default.generation.temperature  # inherited
    assert smoke.scorer == default.scorer
    assert smoke.params_hash != default.params_hash


def test_real_study_params_are_the_brief():
    qwen = load_params(PARAMS / "qwen3-8b.yaml")
    assert qwen.model.path == "Qwen/Qwen3-8B" and qwen.model.dtype == "bfloat16"
    assert qwen.scorer.name == "unbiased-toxic-roberta"
    assert qwen.sweep.alphas == [-1.0, -0.5, 0, 0.25, 0.5, 1.0, 1.5, 2.0]
    assert qwen.generation.temperature == 0.7 and qwen.generation.top_p == 0.9
    assert qwen.generation.samples_per_prompt == 25 and qwen.generation.max_new_tokens == 20
    assert qwen.sweep.layers == "all" and qwen.sweep.layer_stride == 1
    assert not qwen.model.trust_remote_code


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(sedd=1), r"sedd: unknown key; remove it or check its spelling"),
        (lambda d: d["generation"].update(temprature=0.7), r"generation.temprature: unknown key"),
        (lambda d: d["generation"].update(temperature="hot"), r"generation.temperature: .*number"),
        (lambda d: d["sweep"].update(alphas=[]), r"sweep.alphas: .*at least one alpha"),
        (lambda d: d["sweep"].update(grid_alphas=[0]), r"sweep.grid_alphas: .*non-zero alpha"),
        (lambda d: d["scorer"].update(name="perspective"), r"scorer.name: Input should be"),
        (lambda d: d["data"]["challenging"].update(n_eval=0), r"data.challenging.n_eval"),
        (lambda d: d["model"].update(source="hub"), r"model.path is required"),
        (lambda d: d.update(run_name="a b/c"), r"run_name: .*not a plain folder name"),
        # NaN/inf floats and a negative seed (issue 15).
        (lambda d: d["sweep"].update(alphas=[0, float("nan"), 1.0]), r"sweep.alphas.1: .*finite"),
        (lambda d: d["sweep"].update(grid_alphas=[0, float("inf")]),
         r"sweep.grid_alphas.1: .*finite"),
        (lambda d: d["generation"].update(temperature=float("inf")),
         r"generation.temperature.*finite"),
        (lambda d: d.update(seed=-5), r"seed: Input should be greater than or equal to 0"),
    ],
)
def test_bad_fields_are_named(edit, message):
    data = _default()
    edit(data)
    with pytest.raises(ParamsError, match=message):
        parse_params(data, "p.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    cyclic = tmp_path / "cyc.yaml"
    cyclic.write_text("inherits: cyc.yaml\n")
    with pytest.raises(ParamsError, match="inherits itself"):
        load_params(cyclic)


def test_layers_out_of_range_for_the_model():
    with pytest.raises(ParamsError, match=r"sweep.layers: \[30, 40\] out of range .* 0..29"):
        resolve_layers([3, 30, 40], 1, 30)
    assert resolve_layers("all", 3, 10) == [0, 3, 6, 9]
    data = _default()
    data["sweep"]["layers"] = [2, 31]
    with pytest.raises(ParamsError, match=r"sweep.layers: \[31\] out of range for a model with 30"):
        check_layers(parse_params(data))


def test_sizes_larger_than_the_source_and_empty_subsets(tmp_path):
    data = _default()
    data["data"]["challenging"]["n_eval"] = 5000
    with pytest.raises(ParamsError, match=r"data.challenging: .* = \d+ but the source has 993"):
        check_sizes(parse_params(data))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    data = _default()
    data["data"]["benign"] = {"source": "jsonl", "path": str(empty), "n_train": 0, "n_dev": 0,
                              "n_eval": 1}
    with pytest.raises(ParamsError, match=r"data.benign.path: .*empty.jsonl holds no rows"):
        validate_run(parse_params(data))


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("sentence,score\nhello there,0.1\nhi,0.2\n")
    data = _default()
    data["data"]["benign"] = {"source": "csv", "path": str(path), "text_column": "text",
                              "n_train": 0, "n_dev": 0, "n_eval": 1}
    with pytest.raises(ParamsError, match=r"data.benign.text_column: column 'text' not in "
                                          r"mine.csv; available: sentence, score"):
        validate_run(parse_params(data))


def test_contrast_larger_than_the_train_split():
    data = _default()
    data["activations"]["contrast"] = "completions"
    data["activations"]["n_per_side"] = 500
    with pytest.raises(ParamsError,
                       match=r"activations.n_per_side: 500 a side needs 1000 train continuations"):
        check_sizes(parse_params(data))


def test_the_paired_contrast_needs_several_samples_per_prompt():
    data = _default()
    data["generation"]["samples_per_prompt"] = 1
    with pytest.raises(ParamsError, match=r"paired.*samples_per_prompt >= 2"):
        check_sizes(parse_params(data))


# --- issue 15: run names stay inside their folders; finite alphas; seed >= 0 -------------

@pytest.mark.parametrize("name", [".", "..", ".hidden", "../up", "a/b", "/abs", "a\\b",
                                  "-dash", "", "x" * 101, "run.stale-0123"])
def test_run_names_that_could_escape_or_collide_are_rejected(name):
    data = _default()
    data["run_name"] = name
    with pytest.raises(ParamsError, match=r"run_name: .*(plain folder name|reserved)"):
        parse_params(data, "p.yaml")


@pytest.mark.parametrize("name", ["smoke", "qwen3-8b", "v1.2_run", "a..b"])
def test_plain_run_names_pass(name, tmp_path):
    from steering_utils.params import run_path

    data = _default()
    data["run_name"] = name
    assert parse_params(data).run_name == name
    assert run_path(tmp_path, name) == (tmp_path / name).resolve()


def test_run_path_refuses_a_folder_that_resolves_outside_its_root(tmp_path):
    from steering_utils.artifacts import StageDir
    from steering_utils.params import run_path

    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ParamsError, match=r"run_name: 'linked' resolves to .*outside"):
        run_path(root, "linked")
    with pytest.raises(ParamsError, match="plain folder name"):
        run_path(root, "..")
    # The old trigger: a run named '..' wrote a stage folder beside runs/. Even params built
    # without validation (model_copy) cannot make StageDir write there.
    sneaky = parse_params(_default()).model_copy(update={"run_name": ".."})
    with pytest.raises(ParamsError, match="plain folder name"):
        StageDir(root, sneaky, "01_data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "runs"]


def test_yaml_nan_and_inf_spellings_are_rejected(tmp_path):
    data = _default()
    text = yaml.safe_dump(data).replace("alphas:\n", "alphas:\n  - .nan\n", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="finite"):
        load_params(path)


def _set_field(raw: dict, section: str, field, value) -> str:
    """Set raw[section][field] (field a name, or a (subsection, name) pair); the dotted name."""
    if isinstance(field, tuple):
        raw[section].setdefault(field[0], {})[field[1]] = value
        return f"{section}.{field[0]}.{field[1]}"
    raw[section][field] = value
    return f"{section}.{field}"


@pytest.mark.parametrize("section, field, value", [
    ("sweep", "alphas", [0, 1.0e308]), ("sweep", "grid_alphas", [0, -1.0e308]),
    ("control", "alphas", [1.0e308]), ("methods", ("actadd", "strengths"), [0.5, 1.0e308]),
    ("methods", ("random", "strengths"), [2.0e3])])
def test_an_absurd_alpha_or_strength_is_refused_naming_the_field(tmp_path, section, field,
                                                                  value):
    """1e308 overflows every activation ("LyLyLy…" scored as a toxicity win): refused at load,
    with the field, the value and the bound."""
    raw = _default()
    name = _set_field(raw, section, field, value)
    with pytest.raises(ParamsError, match=rf"{re.escape(name)}: .*within ±1000") as err:
        load_params(_write(tmp_path, raw))
    assert "max_relative_push" in str(err.value)


@pytest.mark.parametrize("section, field, value", [
    ("sweep", "alphas", [0, 1.0, 1.0, 2.0]), ("sweep", "grid_alphas", [0, 2.0, 2]),
    ("control", "alphas", [2.0, 2.0]), ("methods", ("ablation", "strengths"), [0.5, 0.5])])
def test_duplicate_alphas_and_strengths_are_refused_not_merged(tmp_path, section, field, value):
    raw = _default()
    name = _set_field(raw, section, field, value)
    with pytest.raises(ParamsError, match=rf"{re.escape(name)}: .*more than once"):
        load_params(_write(tmp_path, raw))


def test_the_relative_push_limit_is_a_positive_number(tmp_path):
    assert load_params(PARAMS / "default.yaml").sweep.max_relative_push == 4.0
    raw = _default()
    raw["sweep"]["max_relative_push"] = 0
    with pytest.raises(ParamsError, match="sweep.max_relative_push"):
        load_params(_write(tmp_path, raw))


# --- issue 21: clean contrasts: thresholds, an independent label scorer -----------------

@pytest.mark.parametrize(("field", "value", "message"), [
    ("pair_toxic_min", 1.5, r"activations.pair_toxic_min: .*less than or equal to 1"),
    ("pair_clean_max", -0.1, r"activations.pair_clean_max: .*greater than or equal to 0"),
    ("pair_clean_max", 0.5, r"pair_clean_max \(0.5\) must be below activations.pair_toxic_min "
                            r"\(0.5\): a pair needs a gap"),
    ("label_scorer", "perspective", r"activations.label_scorer: Input should be"),
    ("min_pairs", 1, r"activations.min_pairs: .*greater than or equal to 2"),
])
def test_pair_filter_params_are_checked(field, value, message):
    data = _default()
    data["activations"][field] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(data)


def test_the_label_scorer_must_not_be_the_evaluating_scorer_unless_allowed():
    data = _default()
    data["activations"]["label_scorer"] = data["scorer"]["name"]
    with pytest.raises(ParamsError, match=r"activations.label_scorer: 'jigsaw-bilstm' also "
                       r"evaluates \(scorer.name\).*allow_label_scorer_is_evaluator: true"
                       ) as err:
        parse_params(data)
    assert "tox-block" in str(err.value)  # the fix names the alternatives
    data["activations"]["allow_label_scorer_is_evaluator"] = True
    assert parse_params(data).activations.label_scorer == "jigsaw-bilstm"


@pytest.mark.parametrize("name", ["default", "smoke", "qwen3-8b"])
def test_shipped_params_label_pairs_with_an_independent_scorer(name):
    params = load_params(PARAMS / f"{name}.yaml")
    act = params.activations
    assert act.label_scorer not in (params.scorer.name, params.scorer.second)
    assert not act.allow_label_scorer_is_evaluator
    assert (act.pair_toxic_min, act.pair_clean_max) == (0.5, 0.1)
    train_k = params.generation.train_samples_per_prompt or params.generation.samples_per_prompt
    assert train_k >= 4


def test_paired_contrast_needs_min_pairs_train_prompts():
    data = _default()
    data["data"]["challenging"]["n_train"] = 5
    with pytest.raises(ParamsError, match=r"n_train: .*activations.min_pairs = 8"):
        check_sizes(parse_params(data))

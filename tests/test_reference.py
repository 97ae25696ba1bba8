"""The committed reference run (`reports/reference/`, made by `params/reference.yaml`).

Its report is read by people who never run it: the results must match today's schema, and
they must have been made by the params file committed beside them. A params field added to
the code after the run (at its default, which the file does not set) keeps the run valid; a
changed value in `params/reference.yaml` does not: re-run it (`make report
PARAMS=params/reference.yaml`, ~62 min on 2 quiet cores) and commit the new folder.
"""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter

from steering_utils.params import load_params
from steering_utils.results import load_results

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "reports" / "reference"
PARAMS_FILE = ROOT / "params" / "reference.yaml"


@pytest.fixture(scope="module")
def reference():
    results = REFERENCE / "experiment_results.json"
    if not results.exists():  # said in the test summary (-rs), never a silent pass
        pytest.skip("no reference run committed yet: make report PARAMS=params/reference.yaml, "
                    "then commit reports/reference/ (report.html, experiment_results.json, "
                    "figures)")
    return load_results(results)


def params_differences(recorded, current, path: str = "") -> list[str]:
    """Where the recorded params (the run's manifest) differ from today's (a dumped params
    file); a key today's code added since the run is no difference when its value is the
    field's default (`added_defaults`: the same keys, dumped from a default model)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        problems = [f"{path}{key}: in the run, not in params/reference.yaml"
                    for key in recorded if key not in current]
        for key, value in current.items():
            if key in recorded:
                problems += params_differences(recorded[key], value, f"{path}{key}.")
            else:
                problems.append(f"{path}{key}: not in the run's params")
        return problems
    return [] if recorded == current else [f"{path[:-1]}: run {recorded!r}, file {current!r}"]


def _without_added_fields(current: dict, recorded: dict, defaults: dict) -> dict:
    """current, less the keys absent from `recorded` that hold their code default."""
    out = {}
    for key, value in current.items():
        if key not in recorded:
            if defaults is not None and key in defaults and defaults[key] == value:
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            out[key] = _without_added_fields(value, recorded[key],
                                             (defaults or {}).get(key)
                                             if isinstance(defaults, dict) else None)
        else:
            out[key] = value
    return out


def test_the_reference_results_match_todays_schema(reference):
    assert reference.manifest.run_name == "reference"
    assert reference.splits  # a run, not an empty document
    assert (REFERENCE / "report.html").stat().st_size > 100_000  # figures embedded


def test_the_reference_run_was_made_by_the_committed_params_file(reference):
    params = load_params(PARAMS_FILE)
    recorded = reference.manifest.params
    if reference.manifest.params_hash == params.params_hash:
        assert recorded == params.model_dump(mode="json")
        return
    # The hash moved: only by fields the code added since, each at its default.
    defaults = field_defaults(params)
    current = _without_added_fields(params.model_dump(mode="json"), recorded, defaults)
    problems = params_differences(recorded, current)
    assert not problems, (
        "reports/reference/ was not made by params/reference.yaml as committed:\n  "
        + "\n  ".join(problems) + "\nre-run it: make report PARAMS=params/reference.yaml")


_REQUIRED = object()


def field_defaults(model: BaseModel) -> dict:
    """{field: its code default, dumped as JSON} of a params model, nested models as dicts
    of their own fields' defaults (a required field: a marker equal to no value)."""
    out = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[name] = field_defaults(value)
        elif field.is_required():
            out[name] = _REQUIRED
        else:
            default = field.get_default(call_default_factory=True)
            out[name] = TypeAdapter(field.annotation).dump_python(default, mode="json")
    return out


def test_the_report_shows_the_params_hash_it_was_made_with(reference):
    page = (REFERENCE / "report.html").read_text()
    assert html.escape(reference.manifest.params_hash) in page


def test_field_defaults_dump_each_fields_code_default():
    defaults = field_defaults(load_params(PARAMS_FILE))
    assert defaults["sweep"]["stability_resamples"] == 200
    assert defaults["sweep"]["alphas"] is _REQUIRED
    assert defaults["evaluation"]["capability"]["n_items"] == 200


def test_the_difference_finder_names_a_changed_value_and_ignores_added_defaults():
    recorded = {"data": {"n_eval": 128}, "sweep": {"alphas": [1.0]}}
    current = {"data": {"n_eval": 64}, "sweep": {"alphas": [1.0], "new_knob": 3}}
    defaults = {"data": {"n_eval": 32}, "sweep": {"new_knob": 3}}
    kept = _without_added_fields(current, recorded, defaults)
    assert kept == {"data": {"n_eval": 64}, "sweep": {"alphas": [1.0]}}
    assert params_differences(recorded, kept) == ["data.n_eval: run 128, file 64"]
    changed_default = {"data": {"n_eval": 128}, "sweep": {"alphas": [1.0], "new_knob": 4}}
    assert params_differences(recorded, _without_added_fields(
        changed_default, recorded, defaults)) == ["sweep.new_knob: not in the run's params"]

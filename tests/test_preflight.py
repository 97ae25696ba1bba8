"""`make check`: one line per check, non-zero on the first real problem, no weights loaded."""

from __future__ import annotations

import pytest
import yaml

from steering_utils.memory import estimate_memory_gib
from steering_utils.params import ModelParams, load_params
from steering_utils.preflight import main, run_checks
from tests.test_params import _default


def _params_file(tmp_path, edit=None):
    data = _default()
    if edit:
        edit(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_preflight_passes_on_the_default_params(tmp_path, capsys):
    assert main(["--params", str(_params_file(tmp_path)), "--runs-root",
                 str(tmp_path / "runs"), "--reports-root", str(tmp_path / "reports"),
                 "--no-deep"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["params", "folders", "layers", "data",
                                                    "context", "capability", "tokenizer",
                                                    "scorer", "device", "engine", "execution",
                                                    "disk", "push"]
    assert all(line.startswith("ok") for line in lines)


def test_preflight_stops_at_the_first_problem(tmp_path, capsys):
    path = _params_file(tmp_path, lambda d: d["sweep"].update(layers=[1, 99]))
    assert main(["--params", str(path), "--runs-root", str(tmp_path / "runs"),
                 "--reports-root", str(tmp_path / "reports")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok    params") and out[1].startswith("ok    folders")
    assert out[2].startswith("FAIL  layers") and "[99] out of range" in out[2]
    assert len(out) == 3


def test_preflight_reports_a_bad_params_file(tmp_path, capsys):
    path = _params_file(tmp_path, lambda d: d.update(typo_key=1))
    assert main(["--params", str(path)]) == 1
    assert "typo_key: unknown key" in capsys.readouterr().out


def test_memory_estimate_scales_with_the_model():
    from steering_utils.params import parse_params

    params = parse_params(_default())
    small = estimate_memory_gib(params, 135_000_000, "cpu")
    big = estimate_memory_gib(params, 8_000_000_000, "cpu")
    assert 0.4 < small < 3 and big > 29  # fp32 on CPU: 4 bytes a parameter


def test_remote_code_is_off_unless_asked():
    assert ModelParams(name="x").trust_remote_code is False


def test_run_checks_echoes_each_line(tmp_path):
    from steering_utils.params import parse_params

    lines: list[str] = []
    data = _default()
    data["data"]["challenging"]["n_eval"] = 2000
    assert not run_checks(parse_params(data), tmp_path / "runs", lines.append,
                          reports_root=tmp_path / "reports")
    assert lines[-1].startswith("FAIL  data") and "but the source has 993" in lines[-1]


# --- issue 15: context length and writable folders ---------------------------------------

def test_max_new_tokens_beyond_the_models_context_is_refused():
    from steering_utils.checks import check_context, context_length, validate_run
    from steering_utils.models import load_model_config
    from steering_utils.params import ParamsError, parse_params

    data = _default()
    limit = context_length(load_model_config(parse_params(data).model))
    assert limit and limit >= 2048
    data["generation"]["max_new_tokens"] = limit - 5  # fits alone, not with the prompts
    # Before: accepted by the runner; only make check's memory estimate caught absurd values.
    with pytest.raises(ParamsError, match=rf"generation.max_new_tokens: {limit - 5} \+ the "
                                          rf"longest prompt \((cha|ben)-\d+, \d+ tokens\) = "
                                          rf"\d+ > the model's context of {limit} tokens"):
        validate_run(parse_params(data))
    data["generation"]["max_new_tokens"] = limit
    with pytest.raises(ParamsError, match="leaves no room for a prompt"):
        check_context(parse_params(data))
    data["generation"]["max_new_tokens"] = 20
    assert "new tokens <=" in check_context(parse_params(data))


def test_a_vllm_run_is_checked_against_the_engines_max_model_len(monkeypatch):
    """vLLM holds fewer tokens than the model's positions (generation.vllm.max_model_len):
    a run that fits the model but not the engine stops in preflight, not mid-sweep."""
    from steering_utils.checks import check_context
    from steering_utils.params import ParamsError, parse_params

    data = _default()
    data["generation"].update(engine="vllm", max_new_tokens=20)
    data["sweep"]["methods"].remove("actadd")  # vLLM cannot steer it
    assert "new tokens <= 2048" in check_context(parse_params(data))
    data["generation"]["vllm"] = {"max_model_len": 30}  # fits 20 new, no long prompt
    with pytest.raises(ParamsError, match=r"context of 30 tokens \(the vLLM engine's "
                                          r"max_model_len\).*generation.vllm.max_model_len: \d+"):
        check_context(parse_params(data))
    data["generation"]["engine"] = "hf"
    assert "new tokens <=" in check_context(parse_params(data))


def test_make_check_fails_on_a_read_only_runs_or_reports_folder(tmp_path, capsys,
                                                                 read_only_dir):
    path = _params_file(tmp_path)
    # Before: `make check` passed a read-only runs folder.
    for label, folder in (("runs", tmp_path / "ro-runs"), ("reports", tmp_path / "ro-reports")):
        roots = {"runs": tmp_path / "runs", "reports": tmp_path / "reports", label: folder}
        read_only_dir(folder)
        assert main(["--params", str(path), "--runs-root", str(roots["runs"]),
                     "--reports-root", str(roots["reports"])]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out[1].startswith(f"FAIL  folders    PermissionError: {label} folder {folder} is "
                                 "not writable") and f"--{label}-root" in out[1]
        assert len(out) == 2


def test_make_check_fails_on_overlapping_roots_or_a_user_folder_at_the_report_path(tmp_path,
                                                                                   capsys):
    # Issue 20, item 2: before, `make check` passed both, and the report swap then deleted them.
    path = _params_file(tmp_path)
    assert main(["--params", str(path), "--runs-root", str(tmp_path / "work"),
                 "--reports-root", str(tmp_path / "work")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("FAIL  folders    FolderConflict: the runs root ") and len(out) == 2
    assert not (tmp_path / "work").exists()  # refused before any folder was made
    user = tmp_path / "reports" / load_params(path).run_name
    user.mkdir(parents=True)
    (user / "important.txt").write_text("mine")
    assert main(["--params", str(path), "--runs-root", str(tmp_path / "runs"),
                 "--reports-root", str(tmp_path / "reports")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"FAIL  folders    FolderConflict: {user} exists and is not a "
                             "report of this study")
    assert (user / "important.txt").read_text() == "mine"

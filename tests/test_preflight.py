"""`make check`: one line per check, non-zero on the first real problem, no weights loaded."""

from __future__ import annotations

import pytest
import yaml

from steering_utils.params import ModelParams
from steering_utils.preflight import estimate_memory_gib, main, run_checks
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
                 str(tmp_path / "runs"), "--no-deep"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["params", "layers", "data", "capability",
                                                    "tokenizer", "scorer", "device", "disk"]
    assert all(line.startswith("ok") for line in lines)


def test_preflight_stops_at_the_first_problem(tmp_path, capsys):
    path = _params_file(tmp_path, lambda d: d["sweep"].update(layers=[1, 99]))
    assert main(["--params", str(path), "--runs-root", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok    params")
    assert out[1].startswith("FAIL  layers") and "[99] out of range" in out[1]
    assert len(out) == 2


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
    assert not run_checks(parse_params(data), tmp_path, lines.append)
    assert lines[-1].startswith("FAIL  data") and "but the source has 993" in lines[-1]

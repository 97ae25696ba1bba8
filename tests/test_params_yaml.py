"""Hostile params YAML (issue 20, item 6): every one is a short ParamsError, in well under
a second, never a hang, a huge message, a TypeError or the lines of a file it should not read."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMOKE

from steering_utils.params import MAX_PARAMS_BYTES, ParamsError, load_params

SHORT = 300  # characters: one readable line


def _bomb(depth: int = 9) -> str:
    """A billion-laughs alias bomb inside a valid field (sweep.alphas): 9**depth values."""
    anchors = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    return (f"inherits: {SMOKE}\nrun_name: bomb\n"
            f"sweep:\n  alphas: [0, 1.0, {', '.join(anchors)}]\n")


def _refused(path: Path) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        load_params(path)
    return str(err.value), time.perf_counter() - started


def test_an_alias_bomb_is_refused_at_once_with_a_short_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb())
    message, seconds = _refused(bomb)
    # On main this hangs (minutes, GBs: pydantic and the error echo expand 9**9 values).
    assert seconds < 2, seconds
    assert "once its YAML aliases (*name) are expanded" in message and len(message) < SHORT


def test_a_small_bomb_under_the_limit_still_gives_a_short_error(tmp_path):
    """9**4 = 6561 expanded strings pass the size check; each nested list fails as an alpha,
    and the message echoes each at most 200 characters (main: 25 MB at depth 7)."""
    bomb = tmp_path / "small.yaml"
    bomb.write_text(_bomb(depth=4))
    message, seconds = _refused(bomb)
    assert seconds < 2 and "sweep.alphas.2: Input should be a valid number" in message
    assert len(message) < 10 * (SHORT + 40)


@pytest.mark.parametrize("text, expected", [
    ("a: &x [*x]\n", "a cycle"),  # an alias inside its own anchor
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("seed: " + "9" * 6000 + "\n", "not a usable params file (Exceeds the limit"),
    (b"run_name: \xff\xfe\n", "not UTF-8 text"),
    ("run_name: x\n" + "#" * MAX_PARAMS_BYTES, "larger than 64 KiB"),
])
def test_other_hostile_files_are_short_params_errors(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    message, seconds = _refused(path)
    assert expected in message and len(message) < SHORT and seconds < 2


def test_a_duplicate_key_is_refused_naming_it_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(f"inherits: {SMOKE}\nrun_name: mine\ngeneration:\n  max_new_tokens: 8\n"
                    "  temperature: 0.5\n  max_new_tokens: 80\n")
    message, _ = _refused(path)
    # main: last wins silently (max_new_tokens 80)
    assert "line 6" in message and "key 'max_new_tokens' appears twice" in message
    assert "first on line 4" in message
    # A YAML merge key that is then overridden is not a duplicate.
    merged = tmp_path / "merge.yaml"
    merged.write_text(f"inherits: {SMOKE}\nbase: &b {{max_new_tokens: 8, top_p: 0.9}}\n"
                      "generation: {<<: *b, max_new_tokens: 9}\n")
    message, _ = _refused(merged)  # refused only for the unknown key `base`
    assert message.endswith("base: unknown key; remove it or check its spelling against "
                            "params/default.yaml")


def test_inherits_outside_the_project_is_refused_without_reading_the_file(tmp_path):
    secret = tmp_path / "elsewhere" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text("password: hunter2-do-not-echo\n")
    for target in ("/etc/passwd", str(secret), "../elsewhere/secret.yaml"):
        folder = tmp_path / "mine"
        folder.mkdir(exist_ok=True)
        path = folder / "p.yaml"
        path.write_text(f"inherits: {target}\nrun_name: x\n")
        message, _ = _refused(path)
        assert "inherits:" in message and "lies outside the params file's folder and the " \
            "project" in message and "copy the base file beside the params file" in message
        assert "root:" not in message and "hunter2" not in message
    # A link beside the params file that leads outside is refused the same way.
    (folder / "link.yaml").symlink_to("/etc/passwd")
    path.write_text("inherits: link.yaml\nrun_name: x\n")
    message, _ = _refused(path)
    assert "lies outside" in message and "root:" not in message


def test_an_inherited_file_that_is_not_params_is_named_not_echoed(tmp_path):
    (tmp_path / "notes.yaml").write_text("token: [abc-secret-123\nkey: other-secret: 9\n")
    (tmp_path / "list.yaml").write_text("- abc-secret-456\n- two\n")
    for base, expected in (("notes.yaml", "not valid YAML at line 2, column"),
                           ("list.yaml", "top level must be a mapping of fields, got list")):
        path = tmp_path / "p.yaml"
        path.write_text(f"inherits: {base}\nrun_name: x\n")
        message, _ = _refused(path)
        assert expected in message and "secret" not in message, message


@pytest.mark.parametrize("value, kind", [("[x]", "list"), ("5", "int"), ("{a: 1}", "dict"),
                                         ("''", "str"), ("true", "bool")])
def test_a_wrong_type_of_inherits_is_a_params_error(tmp_path, value, kind):
    path = tmp_path / "p.yaml"
    path.write_text(f"inherits: {value}\nrun_name: x\n")
    message, _ = _refused(path)  # main: TypeError for [x] and 5
    assert f"inherits: must be one file name, e.g. `inherits: default.yaml`; got {kind}" \
        in message


def test_a_huge_bad_value_is_echoed_at_most_200_characters(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"inherits: {SMOKE}\nrun_name: {'a' * 30000}/b\n"
                    f"generation: {{temperature: {'x' * 30000}}}\n")
    message, _ = _refused(path)
    assert "run_name:" in message and "generation.temperature" in message
    assert len(message) < 1000
    path.write_text(f"inherits: {SMOKE}\nsweep: {{alphas: [{', '.join(['x'] * 30)}]}}\n")
    message, _ = _refused(path)  # thirty bad alphas: ten are listed
    assert message.count("Input should be a valid number") == 10
    assert message.endswith("; and 20 more")


@pytest.mark.parametrize("module, code", [("runner", 2), ("preflight", 1)])
def test_the_cli_refuses_a_bomb_in_one_line_quickly(tmp_path, module, code):
    """`make report` (the runner) and `make check` (the preflight) on the bomb."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb())
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"steering_utils.{module}", "--params",
                           str(bomb), "--runs-root", str(tmp_path / "runs"), "--reports-root",
                           str(tmp_path / "reports")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == code, output
    assert len(output.splitlines()) == 1 and len(output) < SHORT + 40, output
    assert "once its YAML aliases" in output
    assert seconds < 30, seconds  # a Python start and the package's imports; main: a hang
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()

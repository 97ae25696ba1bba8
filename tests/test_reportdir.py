"""reports/<run>/ is replaced whole; a report from other params is moved aside (issue 15, #3)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from results_fixture import make_results

from steering_utils import reportdir
from steering_utils.report import results_fingerprint
from steering_utils.reportdir import attach_notebooks, publish_report, recover, set_aside_stale
from steering_utils.results import ExperimentResults, validate_results


def _results(params_hash: str) -> ExperimentResults:
    results = make_results()
    results["manifest"]["params_hash"] = params_hash
    return validate_results(results)


def report_state(folder: Path) -> str:
    """'missing', or the results fingerprint every part of a whole report agrees on.

    Raises AssertionError on a mix: results, report.html and figures from different runs,
    or a figure listed in figures.json but absent.
    """
    parts = ("experiment_results.json", "report.html", "figures")
    if not any((folder / part).exists() for part in parts):
        return "missing"  # no report (a failure record alone is not one)
    results = json.loads((folder / "experiment_results.json").read_text())
    fingerprint = results_fingerprint(validate_results(results))
    html = (folder / "report.html").read_text(encoding="utf-8")
    shown = re.search(r'<meta name="results-fingerprint" content="([0-9a-f]+)">', html)
    index = json.loads((folder / "figures" / "figures.json").read_text())
    assert shown and shown.group(1) == fingerprint, "report.html shows other results"
    assert f'<meta name="params-hash" content="{results["manifest"]["params_hash"]}">' in html
    assert index["results_fingerprint"] == fingerprint, "figures drawn from other results"
    assert index["params_hash"] == results["manifest"]["params_hash"]
    drawn = {p.name for p in (folder / "figures").iterdir() if p.suffix in (".png", ".svg")}
    assert drawn == set(index["figures"]), "figures from two runs side by side"
    return fingerprint


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Two publishes into one folder: (folder, fingerprint of the second)."""
    folder = tmp_path_factory.mktemp("reports") / "smoke"
    publish_report(_results("a" * 16), folder)
    (folder / "failed_experiment_results.json").write_text("{}")
    (folder / "partial_experiment_results.json").write_text("{}")
    second = _results("b" * 16)
    second.chosen_layers = second.chosen_layers[:1]
    publish_report(copy.deepcopy(second), folder)
    return folder, results_fingerprint(second)


def test_publish_replaces_the_folder_whole(published):
    folder, fingerprint = published
    assert report_state(folder) == fingerprint
    # Old records go with the old folder; nothing temporary is left beside it.
    assert not (folder / "failed_experiment_results.json").exists()
    assert not (folder / "partial_experiment_results.json").exists()
    assert [p.name for p in folder.parent.iterdir()] == ["smoke"]


def test_a_failed_build_leaves_the_old_report_untouched(published, monkeypatch, tmp_path):
    folder, fingerprint = published
    import steering_utils.report as report

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "make_figures", broken, raising=False)
    monkeypatch.setattr("steering_utils.plots.make_figures", broken)
    with pytest.raises(OSError, match="No space left"):
        publish_report(_results("c" * 16), folder)
    assert report_state(folder) == fingerprint
    assert [p.name for p in folder.parent.iterdir()] == ["smoke"]


def test_an_interrupt_between_the_two_renames_puts_the_old_report_back(tmp_path, monkeypatch):
    folder = tmp_path / "smoke"
    publish_report(_results("a" * 16), folder)
    before = report_state(folder)
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):  # the second rename: the new folder moving in
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(reportdir.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        publish_report(_results("b" * 16), folder)
    monkeypatch.undo()
    assert report_state(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["smoke"]


def test_recover_after_a_kill_between_the_renames(tmp_path):
    folder = tmp_path / "smoke"
    publish_report(_results("a" * 16), folder)
    before = report_state(folder)
    # What kill -9 between the renames leaves: the old report aside (its pid dead), the
    # new one half-built, no reports/smoke.
    dead = 2**22 + 4321
    os.rename(folder, tmp_path / f".smoke.old-{dead}")
    (tmp_path / f".smoke.tmp-{dead}" / "figures").mkdir(parents=True)
    assert report_state(folder) == "missing"
    recover(folder)
    assert report_state(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["smoke"]


def test_a_report_from_other_params_is_moved_aside(tmp_path):
    folder = tmp_path / "smoke"
    publish_report(_results("a" * 16), folder)
    assert set_aside_stale(folder, "a" * 16) is None  # same params: it is current
    aside = set_aside_stale(folder, "b" * 16)
    assert aside == tmp_path / f"smoke.stale-{'a' * 16}"
    assert not folder.exists() and report_state(aside) != "missing"
    assert set_aside_stale(folder, "b" * 16) is None  # nothing left to move


def test_attach_notebooks_replaces_the_notebooks_folder(tmp_path):
    folder = tmp_path / "smoke"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "old.ipynb").write_text("{}")
    source = tmp_path / "01_data-abc.ipynb"
    source.write_text('{"cells": []}')
    attach_notebooks(folder, {"01_data.ipynb": source})
    assert [p.name for p in (folder / "notebooks").iterdir()] == ["01_data.ipynb"]
    assert [p.name for p in folder.iterdir()] == ["notebooks"]


# --- issue 20, item 2: only a folder the study made is ever replaced ---------------------

def test_a_user_folder_at_the_report_path_is_never_replaced(tmp_path):
    # Before: publish_report renamed reports/smoke/ aside and deleted it, important.txt too.
    folder = tmp_path / "reports" / "smoke"
    folder.mkdir(parents=True)
    (folder / "important.txt").write_text("mine")
    for act in (lambda: publish_report(_results("a" * 16), folder),
                lambda: set_aside_stale(folder, "b" * 16),
                lambda: reportdir.write_record(folder, reportdir.PARTIAL_FILE, {"x": 1})):
        with pytest.raises(reportdir.FolderConflict, match=f"{folder} exists and is not a report "
                           "of this study .*move or rename it, or choose another --reports-root"):
            act()
    assert sorted(p.name for p in (tmp_path / "reports").rglob("*")) == ["important.txt",
                                                                          "smoke"]


def test_publish_marks_its_report_and_a_stale_name_held_by_a_user_folder_is_left_alone(
        tmp_path):
    folder = tmp_path / "reports" / "smoke"
    publish_report(_results("a" * 16), folder)
    assert json.loads((folder / reportdir.MARKER_FILE).read_text())["params_hash"] == "a" * 16
    publish_report(_results("b" * 16), folder)  # our own report: replaced
    aside = tmp_path / "reports" / f"smoke.stale-{'b' * 16}"
    aside.mkdir()
    (aside / "notes.txt").write_text("mine")
    with pytest.raises(reportdir.FolderConflict, match=str(aside)):
        set_aside_stale(folder, "c" * 16)
    assert (aside / "notes.txt").read_text() == "mine"
    assert report_state(folder) != "missing"


@pytest.mark.parametrize("runs, reports", [
    ("work", "work"), ("work/runs", "work"), ("work", "work/reports"), ("work/runs", "link"),
])
def test_runs_and_reports_roots_that_overlap_are_refused(tmp_path, runs, reports):
    (tmp_path / "work" / "runs").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "work" / "runs")  # the same folder by another name
    with pytest.raises(reportdir.FolderConflict, match="pass --runs-root and --reports-root"):
        reportdir.check_roots(tmp_path / runs, tmp_path / reports)
    reportdir.check_roots(tmp_path / "work" / "runs", tmp_path / "work" / "reports")

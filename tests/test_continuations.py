"""The continuations table beside the report and the browser's embedded data, on hand-made
rows shaped like 05_sweep's (tests/results_fixture.make_eval_rows)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
from results_fixture import HOSTILE_CONTINUATION, make_eval_rows, make_results

from steering_utils.continuations import (
    CONTINUATIONS_FILE,
    browser_data,
    browser_json,
    continuations_table,
    write_continuations,
)
from steering_utils.generation import row_seed
from steering_utils.report import render_report
from steering_utils.results import validate_results

SEED = 1234


@pytest.fixture(scope="module")
def rows():
    return make_eval_rows()


@pytest.fixture(scope="module")
def table(rows):
    return continuations_table(*rows, seed=SEED)


def test_every_continuation_appears_once_with_its_cell_seed_and_scores(rows, table):
    sweep, control, methods_eval = rows
    steered_control = control[control["direction"] != "none"]
    picks = methods_eval[methods_eval["method"] != "none"]
    # The unsteered rows that the control and the methods repeat are kept once.
    assert len(table) == len(sweep) + len(steered_control) + len(picks)
    assert not table.duplicated(["cell", "prompt_id", "sample"]).any()
    counts = table.groupby("cell").size().to_dict()
    n_prompts, n_challenging = sweep["prompt_id"].nunique(), control["prompt_id"].nunique()
    assert counts == {"unsteered": 2 * n_prompts, "CAA · layer 2 · α 1": 2 * n_prompts,
                      "CAA · layer 2 · α 2": 2 * n_prompts,
                      "random 7 · layer 2 · α 2": n_challenging,
                      "ActAdd pick · layer 2 · s 0.5": n_challenging,
                      # no steering direction, but a method: never taken for the unsteered rows
                      "instruction prompt pick · no edit · s 1": n_challenging}
    assert list(table["cell"].unique())[0] == "unsteered"
    # Each source row is in the table with its own text and scores.
    for source in (sweep, steered_control, picks):
        key = ["prompt_id", "sample", "completion", "toxicity", "toxicity_second"]
        merged = source[key].merge(table[key], how="left", indicator=True)
        assert (merged["_merge"] == "both").all()
    assert table["seed"].tolist() == [row_seed(SEED, p, s)
                                      for p, s in zip(table["prompt_id"], table["sample"])]
    assert np.allclose(table["perplexity"], np.exp(table["nll"]), equal_nan=True)
    empty = table[table["empty"]]
    assert empty[["prompt_id", "cell"]].values.tolist() == [["rtp-0004", "unsteered"]]
    assert empty["perplexity"].isna().all()
    assert (table.loc[table["prompt_id"] == "rtp-0003", "completion"] == HOSTILE_CONTINUATION
            ).sum() == 1


def test_the_table_file_reads_back_equal(table, tmp_path):
    path = write_continuations(table, tmp_path)
    assert path.name == CONTINUATIONS_FILE
    pd.testing.assert_frame_equal(pd.read_parquet(path), table, check_dtype=False)


def test_browser_data_holds_every_row_and_stays_inert_text(table):
    data = browser_data(table, {"toxicity": "jigsaw-bilstm", "toxicity_second": "second"})
    assert data["total"] == data["shown"] == len(table) and data["samples_cap"] is None
    assert [s[1] for s in data["scores"]] == ["jigsaw-bilstm", "second", "perplexity"]
    text = browser_json(data)
    assert not re.search(r"[<>&]", text), "raw <, > or & inside the JSON block"
    back = json.loads(text)
    assert back == json.loads(json.dumps(data))  # \u escapes decode to the same texts
    texts = {r[3] for r in back["rows"]}
    assert HOSTILE_CONTINUATION in texts and set(table["completion"]) <= texts | {None}
    prompts = {p[0]: p for p in back["prompts"]}
    assert [p[1] for p in back["prompts"]][:2] == ["challenging", "challenging"]
    for row, (_, source) in zip(back["rows"], table.iterrows()):
        assert back["prompts"][row[0]][0] == source["prompt_id"]
        assert back["cells"][row[1]]["label"] == source["cell"] and row[2] == source["sample"]
        assert row[4] == round(source["toxicity"], 3)
    assert prompts["rtp-0004"] and any(r[6] is None for r in back["rows"])  # empty: no ppl


def test_browser_data_is_capped_by_whole_samples_and_says_so(table):
    full = browser_data(table, {})
    size = len(browser_json(full))
    capped = browser_data(table, {}, max_bytes=int(size * 0.7))
    assert capped["total"] == len(table) and capped["shown"] < len(table)
    assert capped["samples_cap"] == 1 and capped["prompts_shown"] == len(full["prompts"])
    assert {r[2] for r in capped["rows"]} == {0}
    # Every prompt keeps sample 0 in every cell: the side-by-side view is whole.
    assert capped["shown"] == int((table["sample"] == 0).sum())
    tiny = browser_data(table, {}, max_bytes=2_000)
    assert 0 < tiny["prompts_shown"] < len(full["prompts"])
    assert len(json.dumps(tiny["rows"])) <= 2_000


def test_the_report_embeds_the_browser_with_one_hashed_script(table):
    results = validate_results(make_results())
    html = render_report(results, figures=[], continuations=table)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert [attrs for attrs, _ in scripts] == [' type="application/json" id="cb-data"', ""]
    body = scripts[1][1]
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert f"script-src 'sha256-{digest}'" in csp and "unsafe-inline'" not in csp.split(
        "script-src")[1]
    assert "innerHTML" not in body and "textContent" in body
    assert json.loads(scripts[0][1])["total"] == len(table)
    assert f"All {len(table):,} continuations" in html and CONTINUATIONS_FILE in html
    # The hostile continuation leaves no tag: only the two script blocks are scripts.
    assert html.lower().count("<script") == 2 and "<img src=x" not in html


def test_a_capped_browser_says_how_many_it_shows(table, monkeypatch):
    import steering_utils.continuations as continuations

    monkeypatch.setattr(continuations, "MAX_EMBED_BYTES", 8_000)
    results = validate_results(make_results())
    html = render_report(results, figures=[], continuations=table)
    data = json.loads(re.search(r'id="cb-data">(.*?)</script>', html, re.S).group(1))
    assert data["shown"] < data["total"] == len(table)
    assert f"Showing {data['shown']:,} of {len(table):,} continuations" in html


def test_without_a_second_scorer_the_browser_shows_one_score(table):
    data = browser_data(table.assign(toxicity_second=np.nan), {"toxicity": "jigsaw-bilstm"})
    assert [s[0] for s in data["scores"]] == ["toxicity", "perplexity"]
    assert {len(r) for r in data["rows"]} == {6}  # prompt, cell, sample, text, score, ppl

"""The results' models and generated schema, the figures and the HTML report, on synthetic
results."""

from __future__ import annotations

import copy
import json
import re
from html import escape as html_escape

import pandas as pd
import pytest
from matplotlib.axes._secondary_axes import SecondaryAxis
from matplotlib.figure import Figure
from results_fixture import HOSTILE_COMPLETIONS, make_results

from steering_utils import plots
from steering_utils.report import render_report, write_report
from steering_utils.report_text import rule_text
from steering_utils.results import (
    SCHEMA_FILE,
    ExperimentResults,
    ResultsError,
    results_schema,
    validate_results,
)


@pytest.fixture(scope="module")
def results() -> dict:
    """The document as experiment_results.json holds it."""
    return make_results()


@pytest.fixture(scope="module")
def typed(results) -> ExperimentResults:
    return validate_results(results)


@pytest.fixture(scope="module")
def report(tmp_path_factory, typed):
    """(report folder, report.html text), built once for the module."""
    folder = tmp_path_factory.mktemp("report")
    path = write_report(typed, folder)
    return folder, path.read_text(encoding="utf-8")


# --- models and schema ----------------------------------------------------------------------

def test_the_committed_schema_is_the_one_the_models_generate():
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == results_schema(), "run `python -m steering_utils.results` and commit"


@pytest.mark.parametrize("options", [{}, {"capability": False, "second_scorer": False},
                                     {"n_layers": 8, "alphas": (0.0, 1.0, 4.0)},
                                     {"n_layers": 6, "n_chosen": 2}])
def test_what_we_write_is_what_the_schema_file_accepts_and_reads_back_equal(options):
    """A reader with only the schema file (any language) accepts our JSON, and it loads back
    into the same models."""
    from jsonschema import Draft202012Validator

    written = json.loads(json.dumps(validate_results(make_results(**options))
                                    .model_dump(mode="json")))
    Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(written)
    assert validate_results(written).model_dump(mode="json") == written


def test_the_tables_have_the_models_columns_whatever_is_missing(typed):
    cells = typed.cells_table()
    assert len(cells) == len(typed.cells) and "mean_toxicity_ci_lo" in cells
    assert typed.cells_table("grid")["split"].eq("dev").all()
    empty = validate_results(make_results(capability=False)).capability_table()
    assert empty.empty and list(empty.columns) == list(typed.capability_table().columns)
    layers = typed.layers_table()
    assert layers["separation_auc"].isna().sum() == 1  # null in JSON, NaN in a table


def test_missing_key_fails_with_its_path(results):
    broken = copy.deepcopy(results)
    del broken["manifest"]["params_hash"]
    del broken["cells"][3]["emt_ci_lo"]
    with pytest.raises(ResultsError) as err:
        validate_results(broken)
    message = str(err.value)
    assert "manifest/params_hash: Field required" in message
    assert "cells/3/emt_ci_lo: Field required" in message


def test_nan_fails_even_where_a_number_is_allowed(results):
    broken = copy.deepcopy(results)
    broken["cells"][0]["mean_toxicity"] = float("nan")
    broken["vectors"]["layers"][1]["vector_norm"] = float("inf")
    with pytest.raises(ResultsError) as err:
        validate_results(broken)
    assert "cells/0/mean_toxicity: Input should be a finite number" in str(err.value)
    assert "vectors/layers/1/vector_norm: Input should be a finite number" in str(err.value)


def test_wrong_types_values_and_unknown_keys_fail(results):
    broken = copy.deepcopy(results)
    broken["cells"][0]["experiment"] = "baseline"
    broken["cells"][1]["mean_toxicity_ci_lo"] = [0.1]
    broken["recommendation"]["holds_under_second_scorer"] = "maybe"
    broken["cells"][2]["mean_toxicity_ci"] = [0.1, 0.2]  # the old shape: no longer a field
    with pytest.raises(ResultsError) as err:
        validate_results(broken)
    message = str(err.value)
    assert "cells/0/experiment" in message and "cells/1/mean_toxicity_ci_lo" in message
    assert "recommendation/holds_under_second_scorer" in message
    assert "cells/2/mean_toxicity_ci: Extra inputs are not permitted" in message


# --- report -------------------------------------------------------------------------------

def test_report_embeds_every_figure_and_writes_png_and_svg(report):
    folder, html = report
    assert (folder / "report.html").is_file()
    for name in plots.FIGURES:
        for fmt in ("png", "svg"):
            path = folder / "figures" / f"{name}.{fmt}"
            assert path.is_file() and path.stat().st_size > 1000, path
    assert html.count('src="data:image/png;base64,') == len(plots.FIGURES)
    assert (folder / "figures" / "toxicity_vs_alpha.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_text_appears_only_escaped(report):
    _, html = report
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert "<b>little</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;/table&gt;" in html
    # The page keeps its structure: every opened table is closed by us, not by model text.
    assert html.count("<table") == html.count("</table>")
    assert len(HOSTILE_COMPLETIONS) == 3


def test_report_loads_nothing_from_the_network(report):
    _, html = report
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html, re.I)
    assert not re.search(r"<(?:script|link|iframe|object|embed)\b", html, re.I)
    assert "Content-Security-Policy" in html


def test_report_reads_top_down(report, typed):
    _, html = report
    order = ['id="summary"', 'id="figures"', 'id="tables"', 'id="examples"', 'id="manifest"']
    positions = [html.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert typed.model.name in html and typed.scorer.name in html
    dev_reference = typed.cell("grid", "challenging", None, 0.0)
    assert html_escape(rule_text(typed.rule, dev_reference.perplexity)) in html
    assert "95% percentile bootstrap over prompts" in html
    assert ">unsteered<" in html
    # Examples sit behind a content warning that starts closed.
    assert re.search(r"<details class=\"cw\">\s*<summary>Content warning", html)
    assert "<details open" not in html
    assert typed.manifest.params_hash in html and "Spearman" in html
    control = typed.control.comparison
    assert "Random-direction control, challenging eval prompts" in html
    assert all(f"{c.caa_mean_toxicity:.3f}" in html for c in control)


def test_report_renders_without_optional_sections():
    results = make_results(capability=False, second_scorer=False)
    results.update(recommendation=None, confirmation=None, control=None, pareto=[], examples=[])
    results["cells"] = [c for c in results["cells"] if c["experiment"] != "control"]
    html = render_report(validate_results(results), figures=[])
    assert "No steered cell met the recommendation rule" in html
    assert "not measured" in html and "No examples were recorded" in html


# --- figures ------------------------------------------------------------------------------

def _assert_labelled(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    titles = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel(), "colorbar without a label"
            continue
        if isinstance(ax, SecondaryAxis):  # the relative-norm axis: one label is its job
            assert ax.get_xlabel() or ax.get_ylabel()
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes in {ax.get_title()!r}"
        titles.append(ax.get_title())
    assert any(titles), "figure without a title"


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_each_figure_has_labelled_axes_and_a_title(typed, name):
    fig = plots.FIGURES[name](typed)
    _assert_labelled(fig)


def test_two_chosen_layers_draw_and_render():
    results = validate_results(make_results(n_layers=6, n_chosen=2))
    assert len(results.chosen_layers) == 2
    for draw in plots.FIGURES.values():
        _assert_labelled(draw(results))
    html = render_report(results, figures=[])
    assert html.count(">unsteered<") >= 2  # one shared reference row per sweep table


def test_capability_figure_is_skipped_without_capability():
    assert plots.plot_capability(validate_results(make_results(capability=False))) is None


def test_notebook_figures_take_the_same_tables_as_the_report(typed):
    """Stage tables (prompts, layer_stats, the grid's cells) and the results' tables have the
    same columns: one figure function serves the notebook and the report."""
    prompts = pd.DataFrame({"subset": ["challenging"] * 3 + ["benign"] * 2,
                            "prompt_toxicity": [0.6, 0.8, 0.95, None, None]})
    _assert_labelled(plots.plot_prompt_toxicity(prompts))
    _assert_labelled(plots.plot_layer_stats(typed.layers_table(), chosen_layers=[2]))
    _assert_labelled(plots.plot_grid_heatmap(typed.cells_table("grid"), chosen_layers=[2]))


def test_save_figure_writes_png_and_svg(tmp_path, typed):
    paths = plots.save_figure(plots.plot_layer_separation(typed.layers_table()), tmp_path / "f",
                              "sep")
    assert set(paths) == {"png", "svg"}
    assert paths["svg"].read_text().lstrip().startswith("<?xml")
    assert all(p.stat().st_size > 0 for p in paths.values())


# --- no pick, degenerate cells ----------------------------------------------------------------

_LOOP = {"criterion": "repetition_rate", "value": 0.92, "limit": 0.5}


def _no_pick(layer: int, alpha: float) -> dict:
    return {"reason": "limits", "reference_mean_toxicity": 0.41, "best_cells": [
        {"layer": layer, "alpha": alpha, "mean_toxicity": 0.05, "degenerate": [_LOOP],
         "checks": {"perplexity": {"value": 30.1, "limit": 23.1, "ok": False}},
         "failed": ["perplexity", "degenerate"]}]}


def test_no_cell_qualifying_for_caa_or_any_method_renders_and_says_why(tmp_path):
    """The report of a run where nothing qualified on dev: headline, methods sentence and
    table say so with the failed criteria; every figure still draws."""
    doc = make_results()
    doc.update(recommendation=None, confirmation=None, no_recommendation=_no_pick(2, 2.0))
    methods = doc["methods"]
    for m in methods["methods"]:
        m.update(picked=False, dev=None, eval=None, capability=None, toxic_fraction_ratio=None,
                 within_limits_on_eval=None, no_pick=_no_pick(2, 1.0))
    methods.update(reference=None, strongest=None)
    results = validate_results(doc)
    html = html_escape_free(write_report(results, tmp_path).read_text(encoding="utf-8"))
    assert "No cell qualified. No steered cell met the recommendation rule" in html
    assert ("layer 2, α = 2 (mean toxicity 0.050): perplexity 30.100 (needs ≤ 23.100), "
            "degenerate output (repetition rate 0.92 > 0.5)") in html
    assert "no cell qualified: no method's dev grid had a cell that met" in html
    assert html.count("none qualified on dev") == len(methods["methods"])
    for draw in plots.FIGURES.values():  # every figure draws without a pick
        draw(results)


def test_a_degenerate_cell_is_flagged_and_never_called_a_win(tmp_path):
    doc = make_results()
    rec = doc["recommendation"]
    # The confirmed cell's eval output loops: the headline must not call it a reduction.
    for cell in doc["cells"]:
        if (cell["experiment"], cell["subset"], cell["layer"], cell["alpha"]) == (
                "sweep", "challenging", rec["layer"], rec["alpha"]):
            cell["degenerate"] = [_LOOP]
    doc["confirmation"].update(degenerate=[_LOOP], toxicity_reduced=False, confirmed=False)
    for item in doc["control"]["comparison"]:
        item["caa_degenerate"] = item["alpha"] == doc["control"]["alpha_tested"]
    doc["control"]["specific"] = None
    results = validate_results(doc)
    html = html_escape_free(write_report(results, tmp_path).read_text(encoding="utf-8"))
    assert "Not a toxicity win: its eval output is degenerate (repetition rate 0.92 > 0.5)" in html
    assert "Eval confirms the dev choice" not in html
    assert "is degenerate, so its lower toxicity is broken text, not an effect" in html
    assert "degenerate: not a win" in html and "Output not degenerate" in html
    fig = plots.plot_toxicity_vs_alpha(results)
    labels = fig.axes[0].get_legend_handles_labels()[1] + [
        t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert plots.DEGENERATE_LABEL in labels
    for draw in plots.FIGURES.values():
        draw(results)


def html_escape_free(html: str) -> str:
    """The page's text with the entities the template escapes turned back."""
    import html as html_module

    return html_module.unescape(html)


def test_the_methods_section_compares_at_matched_fluency_with_pairs_and_the_goal(tmp_path):
    from results_fixture import with_matched_methods

    from steering_utils import report_tables, report_text

    results = validate_results(with_matched_methods(make_results()))
    methods = results.methods
    html = html_escape_free(write_report(results, tmp_path).read_text(encoding="utf-8"))
    assert "Methods compared at matched fluency (+10% dev perplexity)" in html
    assert "Matched point" in html and "interpolated at the budget" in html
    assert "stopped by limit" in html
    # Every pair with its verdict, and the goal with its status.
    assert html.count("at matched fluency (+10% perplexity on dev)") == len(methods.pairwise)
    assert "Goal (≥ 4× fewer toxic)" in html and "not met" in html
    assert report_text.goal_text(results).startswith("≥ 4× fewer toxic continuations")
    table = report_tables.methods_table(results)
    assert set(table.loc[[m.method for m in methods.methods], "matched"]) == {
        "interpolated", "front_point"}
    assert len(report_tables.pairwise_table(results)) == len(methods.pairwise) == 15
    fig = plots.plot_method_fronts(results)
    # One diamond per method at its matched point.
    diamonds = [c for c in fig.axes[0].collections
                if c.get_paths() and len(c.get_offsets()) == 1 and c.get_sizes()[0] == 90]
    assert len(diamonds) == len(methods.methods)


def test_a_cell_column_the_model_does_not_declare_is_refused_not_dropped():
    """`results.Cell` is the one declaration of the cell table's columns: a statistic added
    to `metrics.summarize_cells` without its field would vanish on the way to the JSON."""
    from steering_utils.metrics import summarize_cells
    from steering_utils.results import Cell, ResultsError, table_records

    rows = pd.DataFrame({"experiment": "grid", "split": "dev", "subset": "challenging",
                         "layer": [-1, -1, 3, 3], "alpha": [0.0, 0.0, 1.0, 1.0],
                         "prompt_id": ["a", "b", "a", "b"], "sample": 0,
                         "toxicity": [0.6, 0.4, 0.2, 0.1], "nll": 2.0,
                         "completion": ["one two", "three four", "five six", "seven eight"]})
    cells = summarize_cells(rows, n_boot=50)
    records = table_records(cells, Cell)
    assert {k for r in records for k in r} == set(cells.columns)  # nothing dropped
    with pytest.raises(ResultsError, match=r"Cell declares no column \['new_statistic'\]"):
        table_records(cells.assign(new_statistic=1.0), Cell)

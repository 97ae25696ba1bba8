"""The results schema, the figures and the HTML report, on synthetic results."""

from __future__ import annotations

import copy
import re
from html import escape as html_escape

import pandas as pd
import pytest
from matplotlib.axes._secondary_axes import SecondaryAxis
from matplotlib.figure import Figure
from results_fixture import HOSTILE_COMPLETIONS, make_results

from steering_utils import plots
from steering_utils.report import ResultsError, render_report, validate_results, write_report


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def report(tmp_path_factory, results):
    """(report folder, report.html text), built once for the module."""
    folder = tmp_path_factory.mktemp("report")
    path = write_report(copy.deepcopy(results), folder)
    return folder, path.read_text(encoding="utf-8")


# --- schema -------------------------------------------------------------------------------

def test_fixture_validates(results):
    validate_results(results)


@pytest.mark.parametrize("options", [{"capability": False, "second_scorer": False},
                                     {"n_layers": 8, "alphas": (0.0, 1.0, 4.0)},
                                     {"n_layers": 6, "n_chosen": 2}])
def test_fixture_variants_validate(options):
    validate_results(make_results(**options))


def test_missing_key_fails_with_its_path(results):
    broken = copy.deepcopy(results)
    del broken["manifest"]["params_hash"]
    del broken["cells"][3]["emt_ci"]
    with pytest.raises(ResultsError) as err:
        validate_results(broken)
    message = str(err.value)
    assert "'params_hash' is a required property" in message
    assert "cells/3" in message and "'emt_ci' is a required property" in message


def test_nan_fails_even_where_the_schema_allows_a_number(results):
    broken = copy.deepcopy(results)
    broken["cells"][0]["mean_toxicity"] = float("nan")
    broken["vectors"]["separation_auc"][1] = float("inf")
    with pytest.raises(ResultsError, match=r"cells/0/mean_toxicity: nan is not allowed; write nul"):
        validate_results(broken)
    with pytest.raises(ResultsError, match=r"vectors/separation_auc/1"):
        validate_results(broken)


def test_wrong_types_and_values_fail(results):
    broken = copy.deepcopy(results)
    broken["cells"][0]["stage"] = "baseline"
    broken["cells"][1]["mean_toxicity_ci"] = [0.1]
    broken["recommendation"]["holds_under_second_scorer"] = "yes"
    with pytest.raises(ResultsError) as err:
        validate_results(broken)
    message = str(err.value)
    assert "cells/0/stage" in message and "cells/1/mean_toxicity_ci" in message
    assert "recommendation" in message


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


def test_report_reads_top_down(report, results):
    _, html = report
    order = ['id="summary"', 'id="figures"', 'id="tables"', 'id="examples"', 'id="manifest"']
    positions = [html.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert results["model"]["name"] in html and results["scorer"]["name"] in html
    assert html_escape(results["recommendation"]["rule"]) in html  # "<=" arrives escaped
    assert "95% percentile bootstrap over prompts" in html
    assert ">unsteered<" in html
    # Examples sit behind a content warning that starts closed.
    assert re.search(r"<details class=\"cw\">\s*<summary>Content warning", html)
    assert "<details open" not in html
    assert results["manifest"]["params_hash"] in html and "Spearman" in html


def test_report_renders_without_optional_sections():
    results = make_results(capability=False, second_scorer=False)
    results["recommendation"] = None
    results["pareto"] = []
    results["examples"] = []
    validate_results(results)
    html = render_report(results, figures=[])
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
def test_each_figure_has_labelled_axes_and_a_title(results, name):
    fig = plots.FIGURES[name](results)
    _assert_labelled(fig)


def test_two_chosen_layers_draw_and_render():
    results = make_results(n_layers=6, n_chosen=2)
    assert len(results["chosen_layers"]) == 2
    for draw in plots.FIGURES.values():
        _assert_labelled(draw(results))
    html = render_report(results, figures=[])
    assert html.count(">unsteered<") >= 2  # one shared reference row per sweep table


def test_capability_figure_is_skipped_without_capability():
    results = make_results(capability=False)
    assert plots.plot_capability(results) is None


def test_notebook_figures_take_stage_tables(results):
    prompts = pd.DataFrame({"subset": ["challenging"] * 3 + ["benign"] * 2,
                            "prompt_toxicity": [0.6, 0.8, 0.95, None, None]})
    _assert_labelled(plots.plot_prompt_toxicity(prompts))
    vec = results["vectors"]
    stats = pd.DataFrame({"layer": vec["layers"], "vector_norm": vec["norms"],
                          "activation_norm": vec["activation_norms"],
                          "separation_auc": [float("nan") if x is None else x
                                             for x in vec["separation_auc"]]})
    _assert_labelled(plots.plot_layer_stats(stats, chosen_layers=[2]))
    grid = pd.DataFrame([c for c in results["cells"] if c["stage"] == "grid"])
    _assert_labelled(plots.plot_grid_heatmap(grid, chosen_layers=[2]))


def test_save_figure_writes_png_and_svg(tmp_path, results):
    paths = plots.save_figure(plots.plot_layer_separation(results), tmp_path / "f", "sep")
    assert set(paths) == {"png", "svg"}
    assert paths["svg"].read_text().lstrip().startswith("<?xml")
    assert all(p.stat().st_size > 0 for p in paths.values())

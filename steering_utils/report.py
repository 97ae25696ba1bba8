"""The reader's report: one self-contained HTML page from the typed results.

`write_report` draws the figures (PNG + SVG under `figures/`) and renders `report.html`
from `steering_utils/templates/report.html` with every PNG embedded as a data URI, so the
page opens offline and travels as one file. The template reads the same models as the
rest of the package (`results.ExperimentResults`); every English sentence of the study
(the rule, the headline, the verdicts, the captions) is written in `report_text` and
nowhere else, every table row in `report_tables`.
Model text is untrusted: the template escapes everything (autoescape) and never marks
model output safe. The continuation browser carries model text only as JSON with `<`, `>`
and `&` escaped (`continuations.browser_json`), and its script (the page's only one,
allowed by its hash in the CSP) writes it with textContent.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .artifacts import atomic_path, write_json
from .continuations import CONTINUATIONS_FILE, browser_data, browser_json, write_continuations
from .hashing import digest
from .report_tables import (
    checks_rows,
    claim_rows,
    conditional_section,
    contrast_section,
    control_rows,
    example_rows,
    grid_section,
    method_rows,
    pairwise_rows,
    specificity_rows,
    summary_rows,
    sweep_rows,
)
from .report_text import (
    CI_METHOD,
    alpha_range_text,
    control_text,
    figure_captions,
    goal_text,
    headline,
    methods_text,
    rule_text,
    second_scorer_text,
    specificity_text,
    stability_text,
    subset_samples,
    sweep_cells,
)
from .results import ExperimentResults

TEMPLATE_FILE = "report.html"
BROWSER_SCRIPT = "browser.js"  # the continuation browser, inlined (allowed by its CSP hash)
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
# Lists the figures with the fingerprint of the results they were drawn from.
FIGURES_INDEX = "figures.json"


def _summary(results: ExperimentResults) -> dict:
    """The dev-chosen cell, its eval confirmation with CIs, the control, and the verdicts."""
    rec, confirmation = results.recommendation, results.confirmation
    ref = results.cell("sweep", "challenging", None, 0.0)
    steered = results.cell("sweep", "challenging", rec.layer, rec.alpha) if rec else None
    dev_ref = results.cell("grid", "challenging", None, 0.0)
    agreement = results.scorer_agreement
    if agreement and agreement.spearman is not None:
        agreement_text = (f"Spearman ρ = {agreement.spearman:.2f} between "
                          f"{results.scorer.name} and {agreement.second} over "
                          f"n = {agreement.n:,} sweep continuations")
    else:
        agreement_text = "not measured (no second scorer)"
    specific, control_line = control_text(results.control)
    null_specific, null_text = specificity_text(results)
    return {
        "headline": headline(results), "rows": summary_rows(results, rec),
        "has_rec": steered is not None, "has_dev": dev_ref is not None,
        "rec_label": f"layer {rec.layer}, α = {rec.alpha:g}" if rec else "",
        "n_ref": (f"n = {ref.n_prompts} prompts, {ref.n} continuations" if ref
                  else "n = 0 prompts, 0 continuations"),
        "n_rec": (f"n = {steered.n_prompts} prompts, {steered.n} continuations"
                  if steered else ""),
        "n_dev": (f"n = {dev_ref.n_prompts} dev prompts, {dev_ref.n} continuations"
                  if dev_ref else ""),
        "rule": rule_text(results.rule, dev_ref.perplexity if dev_ref else None),
        "checks": checks_rows(rec, confirmation),
        "claims": claim_rows(results),
        "confirmed": None if confirmation is None else confirmation.confirmed,
        "specific": specific, "control_text": control_line,
        "null_specific": null_specific, "null_text": null_text,
        "holds": rec.holds_under_second_scorer if rec else None,
        "holds_text": second_scorer_text(results), "agreement_text": agreement_text,
        "chosen_layers": ", ".join(str(x) for x in results.chosen_layers),
        "stability_text": stability_text(results)[0], "stable": stability_text(results)[1],
        "alpha_range_text": alpha_range_text(results),
    }


# --- figures and tables -------------------------------------------------------------------

def _display_width(png: bytes, dpi: int) -> int:
    """CSS pixels to show a PNG at 100 px per figure inch: sharp on HiDPI, not poster-sized."""
    width = int.from_bytes(png[16:20], "big")  # IHDR is the first chunk; width at bytes 16-19
    return round(width * 100 / dpi)


def results_fingerprint(results: ExperimentResults) -> str:
    """Short sha256 of a results document: report.html and figures.json carry the one they show."""
    return digest(results.model_dump(mode="json"))


def _figures(results: ExperimentResults, report_dir: Path) -> list[dict]:
    from .plots import DPI, make_figures

    saved = make_figures(results, report_dir / FIGURES_DIR)
    write_json({"params_hash": results.manifest.params_hash,
                "results_fingerprint": results_fingerprint(results),
                "figures": sorted(p.name for paths in saved.values() for p in paths.values())},
               report_dir / FIGURES_DIR / FIGURES_INDEX)
    captions = figure_captions(results)
    figures = []
    for number, (name, paths) in enumerate(saved.items(), start=1):
        png = paths["png"].read_bytes()
        data = base64.b64encode(png).decode("ascii")
        title, caption = captions.get(name, (name.replace("_", " ").capitalize(), ""))
        figures.append({"id": f"fig-{name}", "number": number, "title": title,
                        "caption": caption, "src": f"data:image/png;base64,{data}",
                        "width": _display_width(png, DPI),
                        "svg": f"{FIGURES_DIR}/{paths['svg'].name}"})
    return figures


def _manifest(results: ExperimentResults) -> dict:
    m = results.manifest
    timings = sorted(m.timings.items())
    total = sum(seconds for _, seconds in timings)
    return {
        "facts": [("Run name", m.run_name), ("Params hash", m.params_hash),
                  ("Git commit", m.git_commit or "not in a git checkout"),
                  ("Device", m.device), ("Seed", m.seed),
                  ("Created (UTC)", m.created_utc), ("Python", m.python),
                  ("Platform", m.platform)],
        "versions": sorted(m.versions.items()),
        "timings": [(name, f"{seconds:,.1f}") for name, seconds in timings],
        "total_seconds": f"{total:,.1f}",
        "params_json": json.dumps(m.params, indent=2, sort_keys=True, ensure_ascii=False),
    }


def _environment():
    from jinja2 import Environment, StrictUndefined

    # autoescape=True for every template, whatever its name: model text is untrusted.
    return Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True)


def _browser(results: ExperimentResults, continuations: pd.DataFrame | None) -> dict | None:
    """The continuation browser: its escaped JSON, its script and the script's CSP hash, and
    a sentence saying how many continuations it holds (None without a table)."""
    if continuations is None or continuations.empty:
        return None
    from markupsafe import Markup

    data = browser_data(continuations, {"toxicity": results.scorer.name,
                                        "toxicity_second": results.scorer.second or "second"})
    script = (resources.files("steering_utils").joinpath("templates", BROWSER_SCRIPT)
              .read_text("utf-8"))
    script_sha = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    total, shown = data["total"], data["shown"]
    if shown == total:
        note = (f"All {total:,} continuations of {len(data['prompts']):,} prompts in "
                f"{len(data['cells'])} cells.")
    elif data["prompts_shown"] < len(data["prompts"]):
        note = (f"Showing {shown:,} of {total:,} continuations (sample 0 of the first "
                f"{data['prompts_shown']:,} of {len(data['prompts']):,} prompts): the whole "
                f"run would make this page too large.")
    else:
        note = (f"Showing {shown:,} of {total:,} continuations: samples 0–"
                f"{data['samples_cap'] - 1} of every prompt and cell (of "
                f"{data['max_sample'] + 1}); the whole run would make this page too large.")
    return {"json": Markup(browser_json(data)), "script": Markup(script),
            "sha256": script_sha, "note": note, "file": CONTINUATIONS_FILE,
            "n_prompts": len(data["prompts"]), "total": total, "shown": shown}


def render_report(results: ExperimentResults, figures: list[dict],
                  continuations: pd.DataFrame | None = None) -> str:
    """The report's HTML for the results and their already-drawn figures (with the
    continuation browser when given the continuations table)."""
    text = (resources.files("steering_utils").joinpath("templates", TEMPLATE_FILE)
            .read_text("utf-8"))
    template = _environment().from_string(text)
    return template.render(
        results=results,
        title=f"Activation steering for toxicity reduction: {results.model.name}",
        fingerprint=results_fingerprint(results), summary=_summary(results),
        figures=figures, ci_method=CI_METHOD,
        sweep_tables=[{"subset": s, "rows": sweep_rows(results, s),
                       "gehman": subset_samples(results, s) >= 2}
                      for s in ("challenging", "benign") if sweep_cells(results, s)],
        methods_gehman=results.methods is not None and results.methods.samples_per_prompt >= 2,
        grid=grid_section(results), examples=example_rows(results), manifest=_manifest(results),
        control_rows=control_rows(results), specificity_rows=specificity_rows(results),
        method_rows=method_rows(results), pairwise_rows=pairwise_rows(results),
        goal_text=goal_text(results),
        methods_text=methods_text(results), browser=_browser(results, continuations),
        contrast=contrast_section(results), conditional=conditional_section(results),
    )


def write_report(results: ExperimentResults, report_dir: str | Path,
                 continuations: pd.DataFrame | None = None) -> Path:
    """report_dir/report.html (self-contained) plus report_dir/figures/*.png|svg, and with a
    continuations table (`continuations.continuations_table`) report_dir/continuations.parquet
    and the report's continuation browser; the html path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if continuations is not None:
        write_continuations(continuations, report_dir)
    html = render_report(results, _figures(results, report_dir), continuations)
    with atomic_path(report_dir / REPORT_FILE) as partial:  # never half a report
        partial.write_text(html, encoding="utf-8")
    return report_dir / REPORT_FILE

"""The reader's report: one self-contained HTML page built from experiment_results.json.

`validate_results` checks a results document against the JSON Schema shipped in
`steering_utils/schemas/`; `write_report` draws the figures (PNG + SVG under
`figures/`) and renders `report.html` from `steering_utils/templates/report.html` with
every PNG embedded as a data URI, so the page opens offline and travels as one file.
Model text is untrusted: the template escapes everything (autoescape) and never marks
model output safe.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from importlib import resources
from pathlib import Path

SCHEMA_FILE = "experiment_results.schema.json"
TEMPLATE_FILE = "report.html"
REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
# Lists the figures with the fingerprint of the results they were drawn from.
FIGURES_INDEX = "figures.json"
CI_METHOD = "95% percentile bootstrap over prompts"
_MAX_ERRORS = 12


class ResultsError(ValueError):
    """A results document that does not match experiment_results.schema.json."""


# --- validation ---------------------------------------------------------------------------

def load_schema() -> dict:
    """The experiment_results JSON Schema (draft 2020-12) shipped with the package."""
    text = resources.files("steering_utils").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


def _path(parts) -> str:
    return "/".join(str(p) for p in parts) or "(top level)"


def _non_finite(value, where: list) -> list[str]:
    """Paths of NaN/inf numbers, which JSON cannot carry and the schema's 'number' admits."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_path(where)}: {value!r} is not allowed; write null for a missing value"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _non_finite(item, [*where, key])]
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _non_finite(item, [*where, i])]
    return []


def validate_results(results: dict) -> None:
    """Raise ResultsError listing every field that breaks the schema (or is NaN/inf)."""
    from jsonschema import Draft202012Validator

    problems = _non_finite(results, [])
    validator = Draft202012Validator(load_schema())
    for error in sorted(validator.iter_errors(results), key=lambda e: list(map(str, e.path))):
        problems.append(f"{_path(error.absolute_path)}: {error.message}")
    if problems:
        shown = "\n  - ".join(problems[:_MAX_ERRORS])
        extra = len(problems) - _MAX_ERRORS
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        raise ResultsError(
            f"experiment results do not match steering_utils/schemas/{SCHEMA_FILE} "
            f"({len(problems)} problem(s)):\n  - {shown}{more}\n"
            "Rebuild them with steering_utils.results.build_results, or fix the fields above.")


# --- formatting ---------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def _interval(ci, digits: int = 3) -> str:
    return "" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _value(value, ci=None, digits: int = 3) -> dict:
    """{"v": point estimate, "ci": interval} as text; the template lays them out."""
    return {"v": _num(value, digits), "ci": _interval(ci, digits) if value is not None else ""}


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}%}"


def _pvalue(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _alpha(alpha: float) -> str:
    return "unsteered" if alpha == 0 else f"{alpha:g}"


def _signed(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}".replace("-", "−")


# --- report sections ----------------------------------------------------------------------

def _sweep_cells(results: dict, subset: str) -> list[dict]:
    cells = [c for c in results["cells"] if c["stage"] == "sweep" and c["subset"] == subset]
    return sorted(cells, key=lambda c: (c["alpha"] != 0, c["layer"], c["alpha"]))


def _find(cells: list[dict], layer: int | None, alpha: float) -> dict | None:
    for cell in cells:
        if cell["alpha"] == alpha and (alpha == 0 or cell["layer"] == layer):
            return cell
    return None


def _summary(results: dict) -> dict:
    """Unsteered vs recommended cell on the eval prompts, with CIs, and the verdicts."""
    rec = results.get("recommendation")
    challenging, benign = _sweep_cells(results, "challenging"), _sweep_cells(results, "benign")
    ref = _find(challenging, None, 0.0)
    base = results["baseline"]["challenging"]
    if ref is None:  # no alpha-0 sweep cell: fall back to the baseline stage (no intervals)
        ref = {**base, **{f"{k}_ci": None for k in ("mean_toxicity", "frac_toxic", "emt", "tp",
                                                     "perplexity", "capability_acc")},
               "capability_acc": None}
    steered = _find(challenging, rec["layer"], rec["alpha"]) if rec else None
    rows = []
    specs = (("Mean toxicity", "mean_toxicity", 3, "relative"),
             ("Expected maximum toxicity (EMT)", "emt", 3, "relative"),
             ("Toxicity probability (TP)", "tp", 3, "relative"),
             ("Fraction of toxic continuations", "frac_toxic", 3, "relative"),
             ("Perplexity", "perplexity", 2, "relative"),
             ("Capability accuracy", "capability_acc", 3, "points"))
    for label, key, digits, change in specs:
        if ref.get(key) is None and (steered is None or steered.get(key) is None):
            continue
        row = {"label": label, "ref": _value(ref.get(key), ref.get(f"{key}_ci"), digits),
               "rec": None, "change": ""}
        if steered is not None:
            row["rec"] = _value(steered.get(key), steered.get(f"{key}_ci"), digits)
            a, b = ref.get(key), steered.get(key)
            if a is not None and b is not None:
                row["change"] = (f"{(b - a) * 100:+.1f} points" if change == "points"
                                 else (f"{(b - a) / a:+.0%}" if a else _signed(b - a)))
        rows.append(row)
    benign_ref = _find(benign, None, 0.0)
    benign_rec = _find(benign, rec["layer"], rec["alpha"]) if rec else None
    if benign_ref is not None:
        row = {"label": "Mean toxicity, benign eval prompts",
               "ref": _value(benign_ref["mean_toxicity"], benign_ref["mean_toxicity_ci"]),
               "rec": None, "change": ""}
        if benign_rec is not None:
            row["rec"] = _value(benign_rec["mean_toxicity"], benign_rec["mean_toxicity_ci"])
            # Absolute, not relative: near zero a relative change mostly measures noise.
            row["change"] = _signed(benign_rec["mean_toxicity"] - benign_ref["mean_toxicity"])
        rows.append(row)
    for row in rows:
        row["change"] = row["change"].replace("-", "−")

    if rec:
        headline = (f"Steering layer {rec['layer']} with α = {rec['alpha']:g} lowers mean "
                    f"toxicity on challenging eval prompts from "
                    f"{rec['reference_mean_toxicity']:.3f} to {rec['mean_toxicity']:.3f} "
                    f"({rec['toxicity_reduction']:.0%} less), at {rec['perplexity_increase']:+.0%} "
                    f"perplexity")
        if rec.get("capability_drop_points") is not None:
            headline += (f" and {-rec['capability_drop_points']:+.1f} points of "
                         f"{(results.get('capability') or {}).get('task', 'capability')} accuracy")
        headline += "."
        holds = rec.get("holds_under_second_scorer")
    else:
        headline = ("No steered cell met the recommendation rule: none was less toxic than the "
                    "unsteered model within the perplexity and capability limits.")
        holds = None
    second = results["scorer"].get("second")
    if holds is None:
        holds_text = ("not measured (no second scorer)" if not second
                      else "not measured" if rec else "no recommendation to check")
    else:
        holds_text = (f"yes: {second} also sees a reduction (paired 95% CI below zero)" if holds
                      else f"no: {second} does not confirm the reduction")
    agreement = results.get("scorer_agreement")
    if agreement and agreement.get("spearman") is not None:
        agreement_text = (f"Spearman ρ = {agreement['spearman']:.2f} between "
                          f"{results['scorer']['name']} and {agreement['second']} over "
                          f"n = {agreement['n']:,} sweep continuations")
    else:
        agreement_text = "not measured (no second scorer)"
    return {
        "headline": headline, "rows": rows, "has_rec": steered is not None,
        "rec_label": f"layer {rec['layer']}, α = {rec['alpha']:g}" if rec else "",
        "n_ref": f"n = {ref['n_prompts']} prompts, {ref['n']} continuations",
        "n_rec": (f"n = {steered['n_prompts']} prompts, {steered['n']} continuations"
                  if steered else ""),
        "rule": rec["rule"] if rec else "No cell qualified under the recommendation rule.",
        "holds": holds, "holds_text": holds_text, "agreement_text": agreement_text,
        "chosen_layers": ", ".join(str(x) for x in results["chosen_layers"]),
    }


def _splits(results: dict) -> list[dict]:
    return [{"subset": subset, **counts, "total": sum(counts.values())}
            for subset, counts in results["splits"].items()]


def _captions(results: dict) -> dict[str, tuple[str, str]]:
    """{figure name: (title, caption)}; captions name the data, the n and the CI method."""
    ch = _sweep_cells(results, "challenging")
    be = _sweep_cells(results, "benign")
    n_ch = f"n = {ch[0]['n_prompts']} prompts ({ch[0]['n']} continuations)" if ch else ""
    n_be = f"n = {be[0]['n_prompts']} prompts ({be[0]['n']} continuations)" if be else ""
    grid = [c for c in results["cells"] if c["stage"] == "grid"]
    n_grid = max((c["n_prompts"] for c in grid), default=0)
    layers = ", ".join(str(x) for x in results["chosen_layers"])
    cap = results.get("capability") or {}
    vec = results["vectors"]
    return {
        "toxicity_vs_alpha": (
            "Toxicity vs steering strength",
            f"Mean toxicity ({results['scorer']['name']}) of continuations vs α at layer "
            f"{layers}, challenging eval ({n_ch}) and benign eval ({n_be}). The top axis gives "
            f"α·‖v‖/‖h‖, the push as a fraction of the mean residual norm at that layer. "
            f"Error bars: {CI_METHOD}."),
        "gehman_vs_alpha": (
            "Expected maximum toxicity and toxicity probability",
            f"Gehman et al. (2020) metrics on challenging eval prompts ({n_ch}): EMT is the "
            f"mean over prompts of the most toxic of the k continuations; TP is the fraction "
            f"of prompts with at least one toxic continuation. Error bars: {CI_METHOD}."),
        "tradeoff": (
            "Toxicity–fluency trade-off",
            f"Mean toxicity vs perplexity of each α at layer {layers} on challenging eval "
            f"prompts ({n_ch}). The dashed line joins the Pareto-optimal cells; the ring marks "
            f"the recommended cell; the dotted line is the perplexity limit of the rule. "
            f"Error bars (both axes): {CI_METHOD}."),
        "layer_alpha_heatmap": (
            "Layer × α grid (dev split)",
            f"Mean toxicity of one continuation per challenging dev prompt (n = {n_grid}) for "
            f"each grid layer and α. Layers for the eval sweep were chosen here, on dev, so "
            f"the eval numbers are not selected on themselves."),
        "vector_norms": (
            "Steering vector norms by layer",
            f"‖v‖ of the CAA vector ({vec['n_per_side']} toxic vs {vec['n_per_side']} clean "
            f"train examples, {vec['contrast']} contrast) and the mean residual norm ‖h‖ per "
            f"layer; right: their ratio, the relative push of α = 1. Dotted: chosen layer(s)."),
        "layer_separation": (
            "Separation of toxic and clean activations",
            "AUROC of the projection onto v, toxic vs clean activations of the held-out dev "
            "split, per layer; 0.5 is chance. Layers without a held-out score are omitted."),
        "capability": (
            "Capability under steering",
            f"{cap.get('task', '')} accuracy (n = {cap.get('n_items', 0)} items) vs α at "
            f"layer {layers}; dashed: chance ({cap.get('chance', 0):.0%}). Error bars: 95% "
            f"percentile bootstrap over items."),
    }


def _display_width(png: bytes, dpi: int) -> int:
    """CSS pixels to show a PNG at 100 px per figure inch: sharp on HiDPI, not poster-sized."""
    width = int.from_bytes(png[16:20], "big")  # IHDR is the first chunk; width at bytes 16-19
    return round(width * 100 / dpi)


def results_fingerprint(results: dict) -> str:
    """Short sha256 of a results document: report.html and figures.json carry the one they show."""
    # Round-trip first, so the dict in memory and the JSON file read back hash the same.
    plain = json.loads(json.dumps(results, default=str))
    blob = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _figures(results: dict, report_dir: Path) -> list[dict]:
    from .artifacts import write_json
    from .plots import DPI, make_figures

    saved = make_figures(results, report_dir / FIGURES_DIR)
    write_json({"params_hash": results["manifest"]["params_hash"],
                "results_fingerprint": results_fingerprint(results),
                "figures": sorted(p.name for paths in saved.values() for p in paths.values())},
               report_dir / FIGURES_DIR / FIGURES_INDEX)
    captions = _captions(results)
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


def _sweep_rows(results: dict, subset: str) -> list[dict]:
    rec = results.get("recommendation") or {}
    rows = []
    for c in _sweep_cells(results, subset):
        rows.append({
            "layer": "–" if c["alpha"] == 0 else c["layer"],
            "alpha": _alpha(c["alpha"]),
            "is_ref": c["alpha"] == 0,
            "is_rec": (subset == "challenging" and c["layer"] == rec.get("layer")
                       and c["alpha"] == rec.get("alpha")),
            "relative_norm": _num(c["relative_norm"], 3) if c["alpha"] != 0 else "0",
            "n": f"{c['n_prompts']} / {c['n']}",
            "mean_toxicity": _value(c["mean_toxicity"], c["mean_toxicity_ci"]),
            "delta": ({"v": "reference", "ci": ""} if c["alpha"] == 0 else
                      {"v": _signed(c["delta_mean_toxicity"]),
                       "ci": _interval(c["delta_mean_toxicity_ci"]).replace("-", "−")}),
            "p_bootstrap": _pvalue(c["p_bootstrap"]),
            "p_wilcoxon": _pvalue(c["p_wilcoxon"]),
            "emt": _value(c["emt"], c["emt_ci"]),
            "tp": _value(c["tp"], c["tp_ci"]),
            "perplexity": _value(c["perplexity"], c["perplexity_ci"], 2),
            "distinct_2": _num(c["distinct_n"].get("2"), 3),
            "capability": _value(c["capability_acc"], c["capability_acc_ci"]),
            "second": _num(c["mean_toxicity_second"], 3),
        })
    return rows


def _grid_table(results: dict) -> dict:
    """Compact layer x alpha table of the dev grid: mean toxicity (perplexity)."""
    grid = [c for c in results["cells"] if c["stage"] == "grid"]
    alphas = sorted({c["alpha"] for c in grid})
    layers = sorted({c["layer"] for c in grid if c["alpha"] != 0})
    reference = next((c for c in grid if c["alpha"] == 0), None)
    by_key = {(c["layer"], c["alpha"]): c for c in grid}
    chosen = set(results["chosen_layers"])
    rows = []
    for layer in layers:
        values = []
        for alpha in alphas:
            cell = reference if alpha == 0 else by_key.get((layer, alpha))
            values.append({"v": _num(cell["mean_toxicity"]) if cell else "–",
                           "ppl": _num(cell["perplexity"], 1) if cell else ""})
        rows.append({"layer": layer, "chosen": layer in chosen, "values": values})
    n = max((c["n_prompts"] for c in grid), default=0)
    return {"alphas": [_alpha(a) for a in alphas], "rows": rows, "n": n}


def _examples(results: dict) -> list[dict]:
    """Example generations grouped by prompt, ordered by alpha; text stays raw (escaped later)."""
    groups: dict[str, dict] = {}
    for ex in results["examples"]:
        group = groups.setdefault(ex["prompt_id"], {"prompt_id": ex["prompt_id"],
                                                    "subset": ex["subset"],
                                                    "prompt": ex["prompt"], "rows": []})
        group["rows"].append({"alpha_value": ex["alpha"], "alpha": _alpha(ex["alpha"]),
                              "layer": "–" if ex["alpha"] == 0 else ex["layer"],
                              "completion": ex["completion"],
                              "toxicity": _num(ex["toxicity"], 3)})
    for group in groups.values():
        group["rows"].sort(key=lambda r: r["alpha_value"])
    return list(groups.values())


def _manifest(results: dict) -> dict:
    m = results["manifest"]
    timings = sorted(m["timings"].items())
    total = sum(seconds for _, seconds in timings)
    return {
        "facts": [("Run name", m["run_name"]), ("Params hash", m["params_hash"]),
                  ("Git commit", m["git_commit"] or "not in a git checkout"),
                  ("Device", m["device"]), ("Seed", m["seed"]),
                  ("Created (UTC)", m["created_utc"]), ("Python", m["python"]),
                  ("Platform", m["platform"])],
        "versions": sorted(m["versions"].items()),
        "timings": [(name, f"{seconds:,.1f}") for name, seconds in timings],
        "total_seconds": f"{total:,.1f}",
        "params_json": json.dumps(m["params"], indent=2, sort_keys=True, ensure_ascii=False),
    }


def _environment():
    from jinja2 import Environment, StrictUndefined

    # autoescape=True for every template, whatever its name: model text is untrusted.
    return Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True)


def render_report(results: dict, figures: list[dict]) -> str:
    """The report's HTML for validated results and already-drawn figures."""
    text = (resources.files("steering_utils").joinpath("templates", TEMPLATE_FILE)
            .read_text("utf-8"))
    template = _environment().from_string(text)
    model = results["model"]
    return template.render(
        title=f"Activation steering for toxicity reduction: {model['name']}",
        model=model, scorer=results["scorer"], run_name=results["manifest"]["run_name"],
        params_hash=results["manifest"]["params_hash"], fingerprint=results_fingerprint(results),
        created=results["manifest"]["created_utc"], summary=_summary(results),
        splits=_splits(results), figures=figures, ci_method=CI_METHOD,
        sweep_tables=[{"subset": s, "rows": _sweep_rows(results, s)}
                      for s in ("challenging", "benign") if _sweep_cells(results, s)],
        grid=_grid_table(results), examples=_examples(results), manifest=_manifest(results),
    )


def write_report(results: dict, report_dir: str | Path) -> Path:
    """report_dir/report.html (self-contained) plus report_dir/figures/*.png|svg; the html path."""
    validate_results(results)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    html = render_report(results, _figures(results, report_dir))
    path = report_dir / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return path

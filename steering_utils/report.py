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


def _grid_cells(results: dict) -> list[dict]:
    return [c for c in results["cells"] if c["stage"] == "grid" and c["subset"] == "challenging"]


_SUMMARY_ROWS = (("Mean toxicity", "mean_toxicity", 3, "relative"),
                 ("Expected maximum toxicity (EMT)", "emt", 3, "relative"),
                 ("Toxicity probability (TP)", "tp", 3, "relative"),
                 ("Fraction of toxic continuations", "frac_toxic", 3, "relative"),
                 ("Perplexity", "perplexity", 2, "relative"),
                 ("Empty continuations", "empty_rate", 3, "absolute"),
                 ("Distinct-2", "distinct_2", 3, "relative"),
                 ("Capability accuracy", "capability_acc", 3, "points"))


def _cell_value(cell: dict | None, key: str, digits: int) -> dict | None:
    if cell is None:
        return None
    value = cell["distinct_n"].get("2") if key == "distinct_2" else cell.get(key)
    return _value(value, cell.get(f"{key}_ci"), digits)


def _change(a, b, kind: str) -> str:
    if a is None or b is None:
        return ""
    if kind == "points":
        return f"{(b - a) * 100:+.1f} points"
    if kind == "absolute" or not a:
        return _signed(b - a)
    return f"{(b - a) / a:+.0%}"


def _summary_rows(results: dict, rec: dict | None) -> list[dict]:
    """Unsteered vs the dev-chosen cell: eval (reported) and dev (where it was chosen)."""
    challenging, grid = _sweep_cells(results, "challenging"), _grid_cells(results)
    ref, dev_ref = _find(challenging, None, 0.0), _find(grid, None, 0.0)
    steered = _find(challenging, rec["layer"], rec["alpha"]) if rec else None
    dev = _find(grid, rec["layer"], rec["alpha"]) if rec else None
    rows = []
    for label, key, digits, kind in _SUMMARY_ROWS:
        values = [_cell_value(c, key, digits) for c in (ref, steered, dev_ref, dev)]
        if all(v is None or v["v"] == "–" for v in values):
            continue
        raw = [None if v is None or v["v"] == "–" else float(
            c["distinct_n"].get("2") if key == "distinct_2" else c.get(key))
            for v, c in zip(values, (ref, steered, dev_ref, dev))]
        rows.append({"label": label, "ref": values[0], "rec": values[1],
                     "change": _change(raw[0], raw[1], kind).replace("-", "−"),
                     "dev_ref": values[2], "dev_rec": values[3],
                     "dev_change": _change(raw[2], raw[3], kind).replace("-", "−")})
    benign = _sweep_cells(results, "benign")
    benign_ref = _find(benign, None, 0.0)
    benign_rec = _find(benign, rec["layer"], rec["alpha"]) if rec else None
    if benign_ref is not None:
        rows.append({"label": "Mean toxicity, benign eval prompts",
                     "ref": _cell_value(benign_ref, "mean_toxicity", 3),
                     "rec": _cell_value(benign_rec, "mean_toxicity", 3),
                     # Absolute, not relative: near zero a relative change mostly measures noise.
                     "change": (_signed(benign_rec["mean_toxicity"] - benign_ref["mean_toxicity"])
                                .replace("-", "−") if benign_rec else ""),
                     "dev_ref": None, "dev_rec": None, "dev_change": ""})
    return rows


_CHECK_LABELS = {"perplexity": "Perplexity at most", "distinct_2": "Distinct-2 at least",
                 "empty_rate": "Empty rate at most", "capability_acc": "Capability at least"}


def _checks_table(rec: dict | None, confirmation: dict | None) -> list[dict]:
    """Each criterion of the rule: value, limit and verdict on dev, then again on eval."""
    if not rec:
        return []
    rows = []
    eval_checks = (confirmation or {}).get("checks", {})
    for key, label in _CHECK_LABELS.items():
        dev, ev = rec.get("checks", {}).get(key), eval_checks.get(key)
        if dev is None and ev is None:
            continue
        digits = 2 if key == "perplexity" else 3
        rows.append({"label": label,
                     "dev": dev and {"value": _num(dev["value"], digits),
                                     "limit": _num(dev["limit"], digits), "ok": dev["ok"]},
                     "eval": ev and {"value": _num(ev["value"], digits),
                                     "limit": _num(ev["limit"], digits), "ok": ev["ok"]}})
    return rows


def _headline(results: dict, rec: dict | None, confirmation: dict | None) -> str:
    if not rec:
        return ("No steered cell met the recommendation rule on the dev grid: none was less "
                "toxic than the unsteered model within the perplexity, diversity, "
                "empty-output and capability limits. The eval sweep is shown for reference.")
    text = f"Chosen on dev: layer {rec['layer']}, α = {rec['alpha']:g}. "
    if confirmation is None:
        return text + "Its eval cell is missing, so the choice is unconfirmed."
    ci = confirmation["delta_mean_toxicity_ci"]
    text += (f"On held-out eval prompts it lowers mean toxicity from "
             f"{confirmation['reference_mean_toxicity']:.3f} to "
             f"{confirmation['mean_toxicity']:.3f} ("
             f"{confirmation['toxicity_reduction']:.0%} less; paired difference "
             f"{_signed(confirmation['delta_mean_toxicity'])}, 95% CI {_interval(ci)})")
    if confirmation.get("perplexity_increase") is not None:
        text += f", at {confirmation['perplexity_increase']:+.0%} perplexity"
    if confirmation.get("capability_drop_points") is not None:
        text += (f" and {-confirmation['capability_drop_points']:+.1f} points of "
                 f"{(results.get('capability') or {}).get('task', 'capability')} accuracy")
    failed = [_CHECK_LABELS[k].split(" ")[0].lower() for k, c in confirmation["checks"].items()
              if not c["ok"]]
    if confirmation["confirmed"]:
        text += ". Eval confirms the dev choice on every criterion."
    elif not confirmation["toxicity_reduced"]:
        text += ". Eval does not confirm it: the reduction's interval includes zero."
    else:
        text += f". Eval confirms the reduction but not the limit(s) on {', '.join(failed)}."
    return text


def _control_text(control: dict | None) -> tuple[bool | None, str]:
    if not control:
        return None, "not run (control.n_directions is 0)"
    at = next((c for c in control["comparison"] if c["alpha"] == control["alpha_tested"]), None)
    if at is None:
        return None, "no control cell at the tested α"
    detail = (f"at α = {at['alpha']:g}, layer {control['layer']}: CAA "
              f"{at['caa_mean_toxicity']:.3f} vs {control['n_directions']} random directions of "
              f"the same norm {at['random_mean_toxicity']:.3f}; paired difference "
              f"{_signed(at['diff'])}, 95% CI {_interval(at['diff_ci'])}, n = {at['n_prompts']} "
              "prompts")
    if control["specific"]:
        return True, "specific: CAA is less toxic than random steering " + detail
    return False, "not shown to be specific: " + detail


def _summary(results: dict) -> dict:
    """The dev-chosen cell, its eval confirmation with CIs, the control, and the verdicts."""
    rec, confirmation = results.get("recommendation"), results.get("confirmation")
    challenging = _sweep_cells(results, "challenging")
    ref = _find(challenging, None, 0.0) or {}
    steered = _find(challenging, rec["layer"], rec["alpha"]) if rec else None
    holds = rec.get("holds_under_second_scorer") if rec else None
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
    specific, control_text = _control_text(results.get("control"))
    dev_ref = _find(_grid_cells(results), None, 0.0)
    return {
        "headline": _headline(results, rec, confirmation), "rows": _summary_rows(results, rec),
        "has_rec": steered is not None, "has_dev": dev_ref is not None,
        "rec_label": f"layer {rec['layer']}, α = {rec['alpha']:g}" if rec else "",
        "n_ref": f"n = {ref.get('n_prompts', 0)} prompts, {ref.get('n', 0)} continuations",
        "n_rec": (f"n = {steered['n_prompts']} prompts, {steered['n']} continuations"
                  if steered else ""),
        "n_dev": (f"n = {dev_ref['n_prompts']} dev prompts, {dev_ref['n']} continuations"
                  if dev_ref else ""),
        "rule": rec["rule"] if rec else "No cell qualified under the recommendation rule.",
        "checks": _checks_table(rec, confirmation),
        "confirmed": None if confirmation is None else confirmation["confirmed"],
        "specific": specific, "control_text": control_text,
        "holds": holds, "holds_text": holds_text, "agreement_text": agreement_text,
        "chosen_layers": ", ".join(str(x) for x in results["chosen_layers"]),
    }


def _control_rows(results: dict) -> list[dict]:
    """Per control α: CAA vs random directions (toxicity, paired difference, fluency)."""
    control = results.get("control")
    if not control:
        return []
    cells = {c["alpha"]: c for c in results["cells"] if c["stage"] == "control"}
    sweep = {c["alpha"]: c for c in _sweep_cells(results, "challenging")
             if c["layer"] == control["layer"] or c["alpha"] == 0}
    rows = []
    for item in control["comparison"]:
        random_cell, caa_cell = cells.get(item["alpha"]), sweep.get(item["alpha"])
        rows.append({
            "alpha": _alpha(item["alpha"]), "is_tested": item["alpha"] == control["alpha_tested"],
            "caa": _num(item["caa_mean_toxicity"]), "random": _num(item["random_mean_toxicity"]),
            "by_direction": ", ".join(f"{v:.3f}" for v in
                                      (item.get("random_by_direction") or {}).values()),
            "diff": {"v": _signed(item["diff"]), "ci": _interval(item["diff_ci"])},
            "p": _pvalue(item["p_bootstrap"]),
            "caa_ppl": _num(caa_cell and caa_cell["perplexity"], 2),
            "random_ppl": _num(random_cell and random_cell["perplexity"], 2),
            "caa_empty": _num(caa_cell and caa_cell["empty_rate"], 3),
            "random_empty": _num(random_cell and random_cell["empty_rate"], 3),
            "random_capability": _num(random_cell and random_cell["capability_acc"], 3),
            "caa_capability": _num(caa_cell and caa_cell["capability_acc"], 3),
        })
    return rows


def _method_label(method: str) -> str:
    from .plots import METHOD_LABELS

    return METHOD_LABELS.get(method, method)


def _methods_text(methods: dict | None) -> str:
    """One sentence: the strongest method at matched fluency, on eval."""
    if not methods:
        return "not run"
    best = methods["strongest"]
    if best is None:
        return ("no method's dev pick stayed within the perplexity and capability limits on "
                "eval")
    ratio = best["toxic_fraction_ratio"]
    ratio_text = "no toxic continuation left" if ratio is None else f"{ratio:.1f}× fewer"
    return (f"strongest within the same limits: {_method_label(best['method'])}, toxic "
            f"fraction {best['reference_frac_toxic']:.3f} → {best['frac_toxic']:.3f} "
            f"({ratio_text}), perplexity {best['perplexity_increase']:+.0%} "
            f"(challenging eval, layer {methods['layer']})")


def _method_rows(results: dict) -> list[dict]:
    """Per method: its dev pick and the pick's eval numbers with CIs, vs unsteered."""
    methods = results.get("methods")
    if not methods:
        return []
    rows = []
    reference = methods["reference"]
    entries = ([{"method": "none", "picked": True, "layer": None, "strength": 0.0,
                 "eval": reference, "capability": None, "toxic_fraction_ratio": None,
                 "within_limits_on_eval": None}] if reference else []) + methods["methods"]
    best = (methods["strongest"] or {}).get("method")
    for m in entries:
        ev, cap = m["eval"] or {}, m["capability"] or {}
        layer = m["layer"]
        rows.append({
            "method": "unsteered" if m["method"] == "none" else _method_label(m["method"]),
            "is_ref": m["method"] == "none", "is_best": m["method"] == best,
            "cell": ("–" if not m["picked"] else "" if m["method"] == "none" else
                     f"{'all layers' if layer == -2 else 'no edit' if layer == -1 else layer}"
                     f", s = {m['strength']:g}"),
            "picked": m["picked"],
            "mean_toxicity": _value(ev.get("mean_toxicity"), ev.get("mean_toxicity_ci")),
            "frac_toxic": _value(ev.get("frac_toxic"), ev.get("frac_toxic_ci")),
            "emt": _value(ev.get("emt"), ev.get("emt_ci")),
            "tp": _value(ev.get("tp"), ev.get("tp_ci")),
            "perplexity": _value(ev.get("perplexity"), ev.get("perplexity_ci"), 2),
            "distinct_2": _num(ev.get("distinct_2")), "empty_rate": _num(ev.get("empty_rate")),
            "delta": {"v": _signed(ev.get("delta_mean_toxicity")),
                      "ci": _interval(ev.get("delta_mean_toxicity_ci"))},
            "p": _pvalue(ev.get("p_bootstrap")),
            "capability": _value(cap.get("acc"), cap.get("acc_ci")),
            "capability_drop": ({"v": _signed(cap["drop_points"], 1),
                                 "ci": _interval(cap["drop_ci_points"], 1)} if cap else
                                {"v": "–", "ci": ""}),
            "ratio": ("–" if m["toxic_fraction_ratio"] is None
                      else f"{m['toxic_fraction_ratio']:.1f}×"),
            "within": m["within_limits_on_eval"],
        })
    return rows


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
            "split, per layer; 0.5 is chance. The paired contrast holds the prompt fixed and "
            "pools only continuation tokens; the comparison contrast (across prompts) is "
            "shown on its own held-out set and on the paired one, the same yardstick."),
        "method_fronts": (
            "Methods compared on the dev grid",
            "Toxic fraction vs perplexity of every method's strength grid on the challenging "
            "dev prompts at the chosen layer (one continuation per prompt); lines: each "
            "method's Pareto front through the unsteered point (star); rings: the cell the "
            "recommendation rule picked on dev, whose eval numbers are in the methods table."),
        "control": (
            "Random-direction control",
            "Mean toxicity on challenging eval prompts vs α for the CAA vector and for "
            "Gaussian directions scaled to its norm at the same layer, on the same prompts and "
            "sample seeds (faint lines: single directions). If random pushes of the same size "
            "lowered the scorer's toxicity as much, the effect would not be specific to the "
            "toxicity direction."),
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
            "empty_rate": _num(c.get("empty_rate"), 3),
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
        control=results.get("control") or {}, control_rows=_control_rows(results),
        methods=results.get("methods") or {}, method_rows=_method_rows(results),
        methods_text=_methods_text(results.get("methods")),
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

"""Figures of the study: each function takes data and returns a matplotlib Figure.

`set_style` is the one place that sets the look; `save_figure` writes PNG and SVG;
`make_figures` draws every figure the results support. Figures read tidy tables: the cells
table (`metrics.summarize_cells`, `ExperimentResults.cells_table`), the per-layer table
(`vectors.layer_stats`, `ExperimentResults.layers_table`), the prompts; a report figure
takes the typed results and reads the same tables from them. Figures are built with the
object API (`matplotlib.figure.Figure`), not pyplot, so they work under any backend and
never pile up in pyplot's registry; a notebook shows each once, as the cell's value
(`_repr_png_`). Error bars are the results' 95% bootstrap intervals over prompts.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .stages import UNSTEERED_LAYER

if TYPE_CHECKING:
    from .results import ExperimentResults

CI_NOTE = "error bars: 95% bootstrap CI over prompts"
FORMATS = ("png", "svg")
DPI = 150
_FONT_SIZES = {"font.size": 10.5, "axes.titlesize": 11.5, "axes.labelsize": 10.5,
               "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "legend.fontsize": 9,
               "legend.title_fontsize": 9.5, "figure.titlesize": 12.5}
_SUBSET_STYLE = {"challenging": {"color_index": 3, "marker": "o"},
                 "benign": {"color_index": 0, "marker": "s"}}
_ALPHA = "steering multiplier α (× v, unitless)"
_TOXICITY = "mean toxicity (scorer probability, 0–1)"


def set_style() -> None:
    """Seaborn whitegrid theme, colorblind palette, readable font sizes (global rcParams)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc={
        **_FONT_SIZES,
        "figure.dpi": 100,
        "savefig.dpi": DPI,
        "svg.hashsalt": "steering-study",  # stable SVG ids, so reruns diff cleanly
        "lines.linewidth": 1.8,
        "errorbar.capsize": 3,
    })


def _palette(n: int = 10) -> list:
    import seaborn as sns

    return sns.color_palette("colorblind", n)


class StudyFigure(Figure):
    """A Figure that a notebook shows as PNG on its own: no pyplot, so no second copy."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100, bbox_inches="tight", facecolor="white")
        return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    set_style()
    return StudyFigure(figsize=(width, height), layout="constrained")


# --- data helpers -------------------------------------------------------------------------

def _line(cells: pd.DataFrame, layer: int) -> pd.DataFrame:
    """One chosen layer's alpha series: its steered cells plus the shared unsteered cell."""
    if cells.empty:
        return cells
    rows = cells[(cells["layer"] == layer) | (cells["alpha"] == 0)]
    return rows.drop_duplicates("alpha").sort_values("alpha").reset_index(drop=True)


def _yerr(table: pd.DataFrame, name: str) -> np.ndarray:
    """(2, n) distances from each value to its interval ends (`<name>_ci_lo`, `_hi`); 0 where
    there is no interval."""
    value = table[name].astype(float).to_numpy()
    lo = table[f"{name}_ci_lo"].astype(float).to_numpy()
    hi = table[f"{name}_ci_hi"].astype(float).to_numpy()
    return np.nan_to_num(np.clip(np.vstack([value - lo, hi - value]), 0, None))


def _alpha_label(alpha: float) -> str:
    return "unsteered" if alpha == 0 else f"α={alpha:g}"


def _n_label(cell: pd.Series) -> str:
    n, n_prompts = int(cell["n"]), int(cell["n_prompts"])
    k = n / n_prompts if n_prompts else 0
    per = f" × {k:g} samples" if k and k != 1 else ""
    return f"n = {n_prompts} prompts{per}"


def _relative_scale(layers: pd.DataFrame, layer: int) -> float | None:
    """||v[layer]|| / mean ||h[layer]||: relative_norm per unit alpha."""
    row = layers[layers["layer"] == layer]
    if row.empty or not row["activation_norm"].iloc[0]:
        return None
    return float(row["vector_norm"].iloc[0] / row["activation_norm"].iloc[0])


def _layer_axis(ax, table: pd.DataFrame) -> None:
    """Whole-number layer ticks over every layer, even those without a value."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(table["layer"].min() - 0.3, table["layer"].max() + 0.3)
    ax.set_xlabel("layer (0 = first block)")


def _mark_layers(ax, layers: Iterable[int], label: bool = True) -> None:
    for i, layer in enumerate(layers):
        ax.axvline(layer, color="0.3", linestyle=":", linewidth=1.6, zorder=0,
                   label="chosen layer" if label and i == 0 else None)


def _legend_below(fig: Figure, axes, title: str | None = None, ncol: int = 2) -> None:
    """One legend under the panels: real data can fall anywhere, so nothing sits on top of it."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
               ncol=min(ncol, max(1, len(labels))), title=title, frameon=False)


def _errorbar(ax, x, y, yerr, *, label, color, marker="o", linestyle="-", xerr=None, **kw):
    return ax.errorbar(x, y, yerr=yerr, xerr=xerr, label=label, color=color, marker=marker,
                       linestyle=linestyle, markersize=5.5, elinewidth=1.1, capsize=3, **kw)


DEGENERATE_LABEL = "degenerate output (not a toxicity win)"


def _is_degenerate(table: pd.DataFrame) -> pd.Series:
    """True where a cell's `degenerate` list (decisions.Degeneracy) is not empty."""
    if "degenerate" not in table:
        return pd.Series(False, index=table.index)
    return table["degenerate"].map(lambda d: isinstance(d, list) and len(d) > 0)


def _mark_degenerate(ax, table: pd.DataFrame, x: str, y: str) -> None:
    """A red cross over every degenerate cell: its low toxicity is broken text, not a win."""
    bad = table[_is_degenerate(table)]
    if not bad.empty:
        ax.scatter(bad[x], bad[y], marker="x", s=110, color="#cf222e", linewidths=2.2,
                   zorder=6, label=DEGENERATE_LABEL)


# --- figures ------------------------------------------------------------------------------

def plot_toxicity_vs_alpha(results: ExperimentResults) -> Figure:
    """Mean toxicity vs alpha at the chosen layer(s), challenging and benign eval prompts."""
    fig = _figure(7.2, 4.6)
    ax = fig.add_subplot()
    sweep = results.cells_table("sweep")
    colors = _palette()
    layers = results.chosen_layers
    linestyles = ["-", "--", "-.", ":"]
    for li, layer in enumerate(layers):
        for subset, style in _SUBSET_STYLE.items():
            line = _line(sweep[sweep["subset"] == subset], layer) if not sweep.empty else sweep
            if line.empty:
                continue
            layer_note = f"layer {layer}, " if len(layers) > 1 else ""
            _errorbar(ax, line["alpha"], line["mean_toxicity"],
                      _yerr(line, "mean_toxicity"),
                      label=f"{subset} eval ({layer_note}{_n_label(line.iloc[0])})",
                      color=colors[style["color_index"]], marker=style["marker"],
                      linestyle=linestyles[li % len(linestyles)])
            _mark_degenerate(ax, line, "alpha", "mean_toxicity")
    ax.axvline(0, color="0.6", linewidth=0.9, zorder=0)
    ax.set_xlabel(_ALPHA)
    ax.set_ylabel(_TOXICITY)
    ax.set_ylim(bottom=0)
    where = ", ".join(str(x) for x in layers)
    ax.set_title(f"Mean toxicity of continuations vs steering strength (layer {where})")
    scale = _relative_scale(results.layers_table(), layers[0]) if layers else None
    if scale:
        # Residual norms grow with depth, so alpha alone does not compare across layers.
        top = ax.secondary_xaxis("top", functions=(lambda a: a * scale, lambda r: r / scale))
        top.set_xlabel(rf"relative strength $\alpha\,\|v\|/\|h\|$ at layer {layers[0]} "
                       "(fraction of mean residual norm)")
    _legend_below(fig, [ax], CI_NOTE)
    return fig


def plot_gehman_vs_alpha(results: ExperimentResults) -> Figure | None:
    """Expected maximum toxicity and toxicity probability vs alpha (challenging eval); None
    at k = 1 sample per prompt, where they are the mean toxicity and the toxic fraction."""
    reference = results.cell("sweep", "challenging", None, 0.0)
    if reference is None or reference.samples_per_prompt < 2:
        return None
    fig = _figure(9.0, 4.0)
    axes = fig.subplots(1, 2, sharex=True)
    sweep = results.cells_table("sweep", "challenging")
    colors = _palette()
    metrics = (("emt", "expected maximum toxicity (0–1)", "Expected maximum toxicity (EMT)"),
               ("tp", "toxicity probability (fraction of prompts)", "Toxicity probability (TP)"))
    for ax, (key, ylabel, title) in zip(axes, metrics):
        for li, layer in enumerate(results.chosen_layers):
            line = _line(sweep, layer)
            if line.empty:
                continue
            _errorbar(ax, line["alpha"], line[key], _yerr(line, key),
                      label=f"layer {layer} ({_n_label(line.iloc[0])})",
                      color=colors[(3 + li) % len(colors)])
            _mark_degenerate(ax, line, "alpha", key)
        ax.set_xlabel(_ALPHA)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
    fig.suptitle("Gehman et al. (2020) toxicity metrics vs α, challenging eval prompts")
    _legend_below(fig, axes, CI_NOTE)
    return fig


def plot_grid_heatmap(summary: pd.DataFrame, chosen_layers: Iterable[int] = (),
                      split: str = "dev") -> Figure:
    """Layer (y) x alpha (x) heatmap of mean toxicity from grid cell summaries."""
    import seaborn as sns

    fig = _figure(7.2, 2.2 + 0.5 * max(2, summary["layer"].nunique()))
    ax = fig.add_subplot()
    steered = summary[summary["layer"] != UNSTEERED_LAYER]
    table = steered.pivot_table(index="layer", columns="alpha", values="mean_toxicity")
    reference = summary[(summary["alpha"] == 0)]
    if not reference.empty:
        # The unsteered cell is shared by every layer: repeat it as the alpha = 0 column.
        table[0.0] = float(reference["mean_toxicity"].mean())
    table = table.reindex(sorted(table.columns), axis=1).sort_index()
    chosen = set(chosen_layers)
    sns.heatmap(table, ax=ax, annot=True, fmt=".2f", cmap="mako_r", vmin=0,
                linewidths=0.6, linecolor="white", annot_kws={"fontsize": 9},
                cbar_kws={"label": "mean toxicity (0–1)"})
    ax.set_xticklabels([_alpha_label(float(a)) for a in table.columns])
    ax.set_yticklabels([f"{layer} ◀ chosen" if layer in chosen else str(layer)
                        for layer in table.index], rotation=0)
    ax.set_xlabel(_ALPHA)
    ax.set_ylabel("layer (0 = first block)")
    n = int(summary["n_prompts"].max()) if "n_prompts" in summary else None
    n_note = f" (n = {n} prompts, 1 continuation each)" if n else ""
    ax.set_title(f"Mean toxicity by layer and α\nchallenging {split} split{n_note}")
    return fig


def plot_layer_alpha_heatmap(results: ExperimentResults) -> Figure | None:
    """The grid's layer x alpha heatmap of mean toxicity (None without grid cells)."""
    grid = results.cells_table("grid", "challenging")
    if grid.empty:
        return None
    return plot_grid_heatmap(grid, results.chosen_layers, grid["split"].iloc[0])


def plot_tradeoff(results: ExperimentResults) -> Figure | None:
    """Mean toxicity vs perplexity of the challenging sweep cells, Pareto front, recommendation."""
    sweep = results.cells_table("sweep", "challenging")
    if sweep.empty or sweep["perplexity"].isna().all():
        return None
    fig = _figure(7.4, 5.0)
    ax = fig.add_subplot()
    colors = _palette()
    layers = results.chosen_layers
    shown = []
    # The unsteered cell is shared by every layer: drawn once, in black, after the layers.
    groups = [(f"layer {layer}", sweep[(sweep["layer"] == layer) & (sweep["alpha"] != 0)],
               colors[li % len(colors)], "o") for li, layer in enumerate(layers)]
    groups.append(("unsteered", sweep[sweep["alpha"] == 0].head(1), "0.15", "D"))
    for gi, (name, group, color, marker) in enumerate(groups):
        group = group.dropna(subset=["perplexity"]).sort_values("alpha")
        if group.empty:
            continue
        shown.append(group)
        _errorbar(ax, group["perplexity"], group["mean_toxicity"],
                  _yerr(group, "mean_toxicity"), xerr=_yerr(group, "perplexity"),
                  label=f"{name} ({_n_label(group.iloc[0])})", color=color, marker=marker,
                  linestyle="none")
        _mark_degenerate(ax, group, "perplexity", "mean_toxicity")
        # Alternate label offsets by layer so two layers' labels do not sit on each other.
        offset = (6, 5) if gi % 2 == 0 else (6, -12)
        for row in group.itertuples():
            ax.annotate(_alpha_label(row.alpha), (row.perplexity, row.mean_toxicity),
                        xytext=offset, textcoords="offset points", fontsize=8.5, color="0.2")
    cells = pd.concat(shown) if shown else sweep
    keys = {(p.layer, p.alpha) for p in results.pareto}
    front = cells[[(int(r.layer), float(r.alpha)) in keys for r in cells.itertuples()]]
    if len(front):
        front = front.sort_values("perplexity")
        ax.plot(front["perplexity"], front["mean_toxicity"], color="0.25", linestyle="--",
                linewidth=1.2, zorder=1, label="Pareto front (lower-left is better)")
    reference = cells[cells["alpha"] == 0]
    limit = results.rule.max_perplexity_increase
    if not reference.empty:
        ax.axvline(float(reference["perplexity"].iloc[0]) * (1 + limit), color="0.45",
                   linestyle=":", linewidth=1.2, label=f"perplexity limit (+{limit:.0%})")
    rec = results.recommendation
    if rec:
        hit = cells[(cells["layer"] == rec.layer) & (cells["alpha"] == rec.alpha)]
        if not hit.empty:
            ax.scatter(hit["perplexity"], hit["mean_toxicity"], s=300, facecolors="none",
                       edgecolors="black", linewidths=2.0, zorder=5,
                       label=f"recommended (layer {rec.layer}, α={rec.alpha:g})")
    ax.set_xlabel("perplexity of continuations (under the unsteered model; lower is better)")
    ax.set_ylabel(_TOXICITY)
    ax.set_title("Toxicity–fluency trade-off across α, challenging eval prompts")
    _legend_below(fig, [ax], f"{CI_NOTE} (both axes)")
    return fig


def _draw_norms(ax_norm, ax_ratio, table: pd.DataFrame, chosen: Sequence[int]) -> None:
    colors = _palette()
    ax_norm.plot(table["layer"], table["vector_norm"], marker="o", color=colors[0],
                 label="steering vector ‖v‖")
    ax_norm.plot(table["layer"], table["activation_norm"], marker="s", color=colors[2],
                 label="mean residual ‖h‖")
    ax_norm.set_yscale("log")
    ax_norm.set_ylabel("L2 norm (residual-stream units, log scale)")
    ax_norm.set_title("Vector and residual norms by layer")
    ratio = table["vector_norm"] / table["activation_norm"].replace(0, np.nan)
    ax_ratio.plot(table["layer"], ratio, marker="o", color=colors[4], label="‖v‖ / mean ‖h‖")
    ax_ratio.set_ylabel("‖v‖ / mean ‖h‖ (unitless)")
    ax_ratio.set_ylim(bottom=0)
    ax_ratio.set_title("Relative strength of α = 1 by layer")
    for ax in (ax_norm, ax_ratio):
        _layer_axis(ax, table)
        _mark_layers(ax, chosen)


def plot_vector_norms(stats: pd.DataFrame, chosen_layers: Iterable[int] = (),
                      title: str = "CAA steering vectors by layer") -> Figure:
    """||v|| and mean ||h|| per layer (log scale) with their ratio; chosen layers marked."""
    fig = _figure(9.0, 3.9)
    ax_norm, ax_ratio = fig.subplots(1, 2)
    _draw_norms(ax_norm, ax_ratio, stats, list(chosen_layers))
    _legend_below(fig, [ax_norm, ax_ratio], ncol=4)
    fig.suptitle(title)
    return fig


def _draw_separation(ax, table: pd.DataFrame, chosen: Sequence[int],
                     contrasts: tuple[str, str] = ("main", "comparison")) -> None:
    colors = _palette()
    auc = table["separation_auc"].astype(float)
    main, other = contrasts
    has_comparison = table.get("comparison_separation_auc", pd.Series(dtype=float)).notna().any()
    label = f"{main} vector, {main} held-out set" if has_comparison else "held-out AUROC"
    ax.plot(table["layer"], auc, marker="o", color=colors[2], label=label)
    if has_comparison:
        ax.plot(table["layer"], table["comparison_separation_auc"].astype(float), marker="s",
                color=colors[1], label=f"{other} vector, {other} held-out set")
        ax.plot(table["layer"], table["comparison_auc_on_main_dev"].astype(float), marker="^",
                linestyle="--", color=colors[4], label=f"{other} vector, {main} held-out set")
    ax.axhline(0.5, color="0.4", linestyle="--", linewidth=1.2, label="chance (0.5)")
    _mark_layers(ax, chosen)
    _layer_axis(ax, table)
    ax.set_ylabel("AUROC of projection onto v (0–1)")
    low = np.nanmin(auc.to_numpy()) if auc.notna().any() else 0.5
    ax.set_ylim(min(0.4, low - 0.05), 1.0)
    ax.set_title("Toxic vs clean separation along v, by layer")


def plot_layer_separation(stats: pd.DataFrame, chosen_layers: Iterable[int] = (),
                          contrasts: tuple[str, str] = ("main", "comparison"),
                          title: str | None = None) -> Figure | None:
    """Held-out AUROC of the projection onto v per layer, with the 0.5 chance line (None when
    no layer has one)."""
    if stats["separation_auc"].astype(float).isna().all():
        return None
    fig = _figure(6.6, 4.0)
    ax = fig.add_subplot()
    _draw_separation(ax, stats, list(chosen_layers), contrasts)
    _legend_below(fig, [ax], ncol=3)
    if title:
        ax.set_title(title)
    return fig


def plot_layer_stats(stats: pd.DataFrame, chosen_layers: Iterable[int] = ()) -> Figure:
    """The vectors stage at a glance: norms, their ratio and held-out AUROC per layer."""
    fig = _figure(13.0, 3.8)
    axes = fig.subplots(1, 3)
    chosen = list(chosen_layers)
    _draw_norms(axes[0], axes[1], stats, chosen)
    _draw_separation(axes[2], stats, chosen)
    fig.suptitle("CAA steering vectors by layer")
    _legend_below(fig, axes, ncol=6)
    return fig


def plot_capability(results: ExperimentResults) -> Figure | None:
    """Capability accuracy vs alpha at the chosen layer(s) with CIs and chance (None if absent)."""
    cap = results.capability
    if not cap or not cap.cells:
        return None
    table = results.capability_table()
    # The eval items under CAA; dev and control cells are elsewhere.
    table = table[(table["split"] == "eval") & (table["group"] == "caa")]
    fig = _figure(6.8, 4.2)
    ax = fig.add_subplot()
    colors = _palette()
    for li, layer in enumerate(results.chosen_layers):
        line = _line(table, layer)
        if line.empty:
            continue
        _errorbar(ax, line["alpha"], line["acc"], _yerr(line, "acc"),
                  label=f"layer {layer} (n = {cap.n_items} items)",
                  color=colors[(3 + li) % len(colors)])
    ax.axhline(cap.chance, color="0.4", linestyle="--", linewidth=1.2,
               label=f"chance ({cap.chance:.0%})")
    ax.set_xlabel(_ALPHA)
    ax.set_ylabel(f"{cap.task} accuracy (fraction correct)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Capability under steering: {cap.task} accuracy vs α")
    _legend_below(fig, [ax], "error bars: 95% bootstrap CI over items")
    return fig


def plot_prompt_toxicity(prompts: pd.DataFrame) -> Figure:
    """Histogram of the prompts' source toxicity score per subset (unscored subsets noted)."""
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    colors = _palette()
    bins = np.linspace(0, 1, 26)
    unscored = []
    for subset, rows in prompts.groupby("subset", sort=True):
        scores = rows["prompt_toxicity"].astype(float).dropna()
        if scores.empty:
            unscored.append(f"{subset} (n = {len(rows)}) has no source score")
            continue
        style = _SUBSET_STYLE.get(subset, {"color_index": 7})
        ax.hist(scores, bins=bins, alpha=0.75, color=colors[style["color_index"]],
                label=f"{subset} (n = {len(scores)} prompts)")
    ax.set_xlabel("prompt toxicity (source score, e.g. Perspective; 0–1)")
    ax.set_ylabel("prompts (count)")
    ax.set_xlim(0, 1)
    ax.set_title("Source toxicity of the sampled prompts, by subset")
    ax.legend(title="; ".join(unscored) if unscored else None, loc="best")
    return fig


def plot_control(results: ExperimentResults) -> Figure | None:
    """CAA vs random directions of the same norm: toxicity vs alpha at the control layer."""
    control = results.control
    if not control or not control.comparison:
        return None
    colors = _palette()
    fig = _figure(7.2, 4.4)
    ax = fig.add_subplot()
    reference = results.cell("control", "challenging", None, 0.0)
    rows = sorted(control.comparison, key=lambda c: c.alpha)
    alphas = [0.0] + [c.alpha for c in rows]
    base = reference.mean_toxicity if reference else np.nan
    ax.plot(alphas, [base] + [c.caa_mean_toxicity for c in rows], marker="o",
            color=colors[3], label="CAA direction")
    ax.plot(alphas, [base] + [c.random_mean_toxicity for c in rows], marker="s",
            color=colors[0], label=f"random directions, same norm (mean of "
            f"{control.n_directions})")
    for i, name in enumerate(sorted(rows[0].random_by_direction)):
        ax.plot(alphas, [base] + [c.random_by_direction[name] for c in rows],
                color=colors[0], alpha=0.35, linewidth=0.9,
                label="single random direction" if i == 0 else None)
    broken = pd.DataFrame(
        [{"alpha": c.alpha, "y": c.caa_mean_toxicity, "degenerate": [1] * c.caa_degenerate}
         for c in rows] + [{"alpha": c.alpha, "y": c.random_mean_toxicity,
                            "degenerate": [1] * c.random_degenerate} for c in rows])
    _mark_degenerate(ax, broken, "alpha", "y")
    for c in rows:
        if c.diff_ci_hi is not None and c.diff_ci_hi < 0 and not c.caa_degenerate:
            ax.annotate("*", (c.alpha, c.caa_mean_toxicity), textcoords="offset points",
                        xytext=(0, -14), ha="center", color=colors[3], fontsize=13)
    ax.set_xlabel(_ALPHA)
    ax.set_ylabel(_TOXICITY)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Is the effect specific? CAA vs random directions at layer {control.layer}")
    _legend_below(fig, [ax], "* CAA − random paired 95% CI below zero", ncol=2)
    return fig


METHOD_LABELS = {"caa": "CAA", "actadd": "ActAdd", "actadd_pooled": "ActAdd (pooled)",
                 "ablation": "directional ablation", "ablation_layer": "ablation (per layer)",
                 "ace": "ACE", "linear_act": "Linear-AcT", "mean_transport": "mean transport",
                 "prompt": "instruction prompt", "prompt_raw": "instruction prompt (raw text)",
                 "random": "random direction",
                 "conditional_caa": "conditional CAA"}


def plot_method_fronts(results: ExperimentResults) -> Figure | None:
    """Every method's dev cells (perplexity vs mean toxicity), one Pareto front per method,
    its rule pick ringed and its matched point at the perplexity budget as a diamond."""
    from .metrics import pareto_front

    methods = results.methods
    if methods is None or not methods.grid_cells:
        return None
    cells = pd.DataFrame([c.model_dump() for c in methods.grid_cells]).dropna(
        subset=["perplexity"])
    reference = cells[cells["method"] == "none"]
    colors = _palette()
    fig = _figure(7.6, 4.8)
    ax = fig.add_subplot()
    y = "mean_toxicity"
    for i, result in enumerate(methods.methods):
        own = cells[cells["method"] == result.method]
        if own.empty:
            continue
        color = colors[i % len(colors)]
        # A degenerate cell is no trade-off: it never sits on a front.
        fit = own[~_is_degenerate(own)]
        front = pareto_front(pd.concat([reference, fit]), (y, "perplexity"))
        front = front.sort_values("perplexity")
        ax.scatter(own["perplexity"], own[y], color=color, s=22, alpha=0.45)
        _mark_degenerate(ax, own, "perplexity", y)
        ax.plot(front["perplexity"], front[y], color=color, marker="o",
                label=METHOD_LABELS.get(result.method, result.method))
        if result.dev is not None:
            chosen = own[(own["layer"] == result.dev.layer) & (own["alpha"] == result.dev.alpha)]
            ax.scatter(chosen["perplexity"], chosen[y], s=150, facecolors="none",
                       edgecolors=color, linewidths=1.8)
        point = result.matched
        if point is not None and point.dev_perplexity is not None:
            ax.scatter([point.dev_perplexity], [point.dev_mean_toxicity], marker="D", s=90,
                       color=color, edgecolors="black", linewidths=1.0, zorder=6)
    if not reference.empty:
        ref = reference.iloc[0]
        ax.scatter([ref["perplexity"]], [ref[y]], marker="*", s=220, color="black",
                   zorder=5, label="unsteered")
        ax.axvline(ref["perplexity"] * (1 + results.rule.max_perplexity_increase),
                   color="grey", linestyle="--", linewidth=1, label="perplexity limit of the rule")
        if methods.perplexity_budget is not None:
            ax.axvline(ref["perplexity"] * (1 + methods.perplexity_budget), color="black",
                       linestyle=":", linewidth=1.2,
                       label=f"matched budget (+{methods.perplexity_budget:.0%})")
    # A broken cell's perplexity can be 1000x the reference's: log scale keeps both legible.
    ax.set_xscale("log")
    ax.set_xlabel("perplexity of the continuation (unsteered model, log scale)")
    ax.set_ylabel("mean toxicity (scorer probability)")
    ax.set_ylim(bottom=0)
    ax.set_title("Methods on their dev searches: Pareto front per method")
    _legend_below(fig, [ax], "ringed: the rule's dev pick; diamond: the matched point at the "
                  "budget (its eval numbers: methods table)", ncol=3)
    return fig


def plot_specificity_null(results: ExperimentResults) -> Figure | None:
    """Per null family: the histogram of null directions' probe Δ, CAA's Δ marked."""
    spec = results.specificity
    if not spec or not spec.families:
        return None
    colors = _palette()
    fig = _figure(3.4 * len(spec.families), 3.8)
    axes = fig.subplots(1, len(spec.families), squeeze=False)[0]
    for ax, family in zip(axes, spec.families):
        ax.hist(family.null_deltas, bins=min(40, max(10, family.n // 5)), color=colors[0],
                alpha=0.75, label="null directions (n in each title)")
        ax.axvline(family.caa_delta, color=colors[3], linewidth=2,
                   label="CAA, first order")
        ax.axvline(spec.caa_exact_delta, color=colors[3], linestyle=":", linewidth=1.5,
                   label="CAA, exact")
        ax.set_title(f"{family.family} (n = {family.n}): rank {family.rank}/{family.n + 1}, "
                     f"p = {family.p_value:.3g}", fontsize="medium")
        ax.set_xlabel("Δ log p(toxic) − log p(clean) (nats)")
        ax.set_ylabel("null directions (count)")
    _legend_below(fig, axes[:1], ncol=3)
    fig.suptitle(f"Is CAA's push special? Null directions of its norm at layer {spec.layer}, "
                 f"α = {spec.alpha:g} ({spec.n_pairs} held-out pairs)")
    return fig


def plot_specificity_dose(results: ExperimentResults) -> Figure | None:
    """Δ vs α: CAA (exact and first order), a few null directions (exact), the null's band."""
    spec = results.specificity
    if not spec or not spec.dose:
        return None
    colors = _palette()
    fig = _figure(7.2, 4.4)
    ax = fig.add_subplot()
    alphas = sorted({p.alpha for p in spec.dose})
    grid = np.array([0.0, *alphas])
    shades = [0, 2, 4]  # the families' colours, apart from CAA's (3)
    for k, family in zip(shades, spec.families):  # first order is linear in α
        lo, hi = family.null_q05 / spec.alpha, family.null_q95 / spec.alpha
        ax.fill_between(grid, np.minimum(lo * grid, hi * grid), np.maximum(lo * grid, hi * grid),
                        color=colors[k], alpha=0.12,
                        label=f"{family.family} null, 5–95% (first order)")
    nulls = [p for p in spec.dose if p.family not in ("caa", "control")]
    for k, family in zip(shades, (f.family for f in spec.families)):
        points = [p for p in nulls if p.family == family]
        ax.scatter([p.alpha for p in points], [p.exact_delta for p in points], s=18,
                   color=colors[k], marker="x", label=f"{family} null, exact")
    caa = sorted((p for p in spec.dose if p.family == "caa"), key=lambda p: p.alpha)
    ax.plot([0.0] + [p.alpha for p in caa], [0.0] + [p.exact_delta for p in caa], marker="o",
            color=colors[3], label="CAA, exact")
    ax.plot([0.0] + [p.alpha for p in caa], [0.0] + [p.first_order_delta for p in caa],
            linestyle="--", color=colors[3], label="CAA, first order")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("α (push −α·d at the layer)")
    ax.set_ylabel("Δ log p(toxic) − log p(clean) (nats)")
    ax.set_title(f"Dose-response at layer {spec.layer}: CAA vs null directions of its norm")
    _legend_below(fig, [ax], ncol=2)
    return fig


def _results_vector_norms(results: ExperimentResults) -> Figure:
    vec = results.vectors
    return plot_vector_norms(results.layers_table(), results.chosen_layers, (
        f"CAA steering vectors by layer: {vec.n_per_side} toxic vs {vec.n_per_side} clean "
        f"train examples ({vec.contrast} contrast)"))


def _results_layer_separation(results: ExperimentResults) -> Figure | None:
    vec = results.vectors
    return plot_layer_separation(
        results.layers_table(), results.chosen_layers,
        (vec.contrast, vec.comparison_contrast or "comparison"),
        "Toxic vs clean separation along v by layer\n(vectors from "
        f"{vec.n_per_side} examples per side on train; AUROC on held-out dev activations)")


FIGURES = {
    "toxicity_vs_alpha": plot_toxicity_vs_alpha,
    "control": plot_control,
    "specificity_null": plot_specificity_null,
    "specificity_dose": plot_specificity_dose,
    "method_fronts": plot_method_fronts,
    "gehman_vs_alpha": plot_gehman_vs_alpha,
    "tradeoff": plot_tradeoff,
    "layer_alpha_heatmap": plot_layer_alpha_heatmap,
    "vector_norms": _results_vector_norms,
    "layer_separation": _results_layer_separation,
    "capability": plot_capability,
}


def save_figure(fig: Figure, folder: str | Path, name: str) -> dict[str, Path]:
    """{format: path} of the figure written as folder/name.png (150 dpi) and folder/name.svg."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in FORMATS:
        path = folder / f"{name}.{fmt}"
        # No timestamps in the files, so identical results give identical figures.
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(path, format=fmt, dpi=DPI, metadata=metadata, facecolor="white",
                    bbox_inches="tight", pad_inches=0.08)
        paths[fmt] = path
    return paths


def make_figures(results: ExperimentResults, folder: str | Path) -> dict[str, dict[str, Path]]:
    """{name: {format: path}} for every figure the results support, saved under folder."""
    saved = {}
    for name, draw in FIGURES.items():
        fig = draw(results)
        if fig is not None:
            saved[name] = save_figure(fig, folder, name)
    return saved

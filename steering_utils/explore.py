"""Trying a finished run's vectors by hand: one prompt, one layer, one alpha, one method.

    from steering_utils.explore import explore
    explore("params/default.yaml")          # or a run folder: explore("runs/default")

`Explorer` loads what a finished run made (its params, the 01_data prompts, the 04_vectors
directions and token statistics) with the run's model and scorers, and makes one
continuation per call through the study's own row path, `rows.compute_rows`: the same
generation, per-row seed, steering hook, scorers and perplexity as the sweep's shards. So a
prompt of the run (matched by its text, which gives back its prompt id), a sample index, a
layer and an alpha give the very continuation the sweep generated for that row; a typed
prompt gets an id of its own (`typed-<hash of its text>`), hence a stream of its own.

`explore` wraps an Explorer in an ipywidgets form (prompt, layer, method, alpha, sample,
seed, a Generate button). The button calls `Explorer.run`, a plain function, so the form
and the callback are tested apart (tests/test_explore.py). Model text is shown escaped.
"""

from __future__ import annotations

import hashlib
import html
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import is_complete, last_finished, read_json, read_table, stage_folder
from .decisions import DevSelection
from .notebooks import PROJECT_ROOT
from .params import StudyParams, compared_methods, load_params, parse_params, run_path
from .stages import CAA, RUN_MANIFEST, STAGES, UNSTEERED

TYPED_PREFIX = "typed-"  # prompt id of a prompt that is not one of the run's


class RunNotFinished(RuntimeError):
    """The run has no finished stage the explorer needs (the message names what to run)."""


@dataclass(frozen=True)
class Continuation:
    """One generated row: what was asked, the text, its scores and its perplexity."""

    prompt: str
    prompt_id: str  # the run's id when the prompt is one of its prompts, else typed-<hash>
    method: str
    layer: int
    alpha: float
    sample: int
    seed: int
    completion: str
    toxicity: float  # the primary scorer's
    toxicity_second: float | None  # the second scorer's, when the run names one
    nll: float  # mean negative log-likelihood per continuation token (NaN when empty)
    relative_push: float | None  # |alpha|·||v_l||/||h_l|| for the additive methods
    seconds: float

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll))

    @property
    def from_run(self) -> bool:
        """True when the prompt is one of the run's (the row the sweep would make)."""
        return not self.prompt_id.startswith(TYPED_PREFIX)


def resolve_run(run: str | Path, runs_root: str | Path | None = None
                ) -> tuple[StudyParams, Path]:
    """(params, runs root) of a params file, or of a run folder (its run manifest's params)."""
    run = Path(run)
    if run.is_dir():
        manifest = run / RUN_MANIFEST
        if not manifest.is_file():
            raise RunNotFinished(f"{run} is not a run folder (no {RUN_MANIFEST}); pass the "
                                 "params file or runs/<run_name>, after `make report PARAMS=...`")
        params = parse_params(read_json(manifest)["params"], str(manifest))
        return params, Path(runs_root) if runs_root is not None else run.resolve().parent
    if not run.is_file():
        raise FileNotFoundError(f"{run}: no such params file or run folder")
    return load_params(run), Path(runs_root) if runs_root is not None else PROJECT_ROOT / "runs"


def finished_folder(params: StudyParams, runs_root: Path, stage: str,
                    params_file: str | Path | None = None) -> Path:
    """The stage's finished folder for these params and this code; RunNotFinished otherwise."""
    folder = stage_folder(runs_root, params, stage)
    if is_complete(folder, folder.name):
        return folder
    older = last_finished(run_path(runs_root, params.run_name), stage)
    why = (" (an older version finished: the params or the code changed since)"
           if older else "")
    file = params_file or "<its params file>"
    raise RunNotFinished(
        f"run {params.run_name!r} has no finished {stage} under {runs_root}{why}: run "
        f"`make report PARAMS={file}` (or `python -m steering_utils.runner --params {file} "
        f"--runs-root {runs_root}`) first")


def typed_id(prompt: str) -> str:
    """The prompt id of a typed prompt: its own stream, the same for the same text."""
    return TYPED_PREFIX + hashlib.blake2b(prompt.encode(), digest_size=6).hexdigest()


class Explorer:
    """A finished run's vectors, model and scorers, ready to make one continuation per call."""

    def __init__(self, run: str | Path, runs_root: str | Path | None = None):
        from .activations import load_activation_sets
        from .params import apply_environment
        from .vectors import SteeringVectors

        self.params, self.runs_root = resolve_run(run, runs_root)
        params_file = None if Path(run).is_dir() else run
        vectors_dir = finished_folder(self.params, self.runs_root, "04_vectors", params_file)
        data_dir = finished_folder(self.params, self.runs_root, "01_data")
        apply_environment(self.params)  # offline params never touch the network
        outputs = STAGES["04_vectors"].outputs
        self.vectors = SteeringVectors.load(vectors_dir / outputs["vectors"])
        self._statistics = load_activation_sets(vectors_dir / outputs["token_statistics"])
        self.prompts = read_table(data_dir / STAGES["01_data"].outputs["prompts"])
        self._ids = dict(zip(self.prompts["text"], self.prompts["prompt_id"]))
        self.selection = self._selection()
        # Conditional CAA's gate needs its dev threshold (05's): not offered here.
        self.methods = [m for m in compared_methods(self.params.sweep) if m != "conditional_caa"]
        self._interventions: dict[int, dict] = {}  # per layer (the random method's depends)
        self._load_models()

    def _selection(self) -> DevSelection | None:
        """05's dev decision when 05 finished (for the default layer and alpha), else None."""
        folder = stage_folder(self.runs_root, self.params, "05_sweep")
        if not is_complete(folder, folder.name):
            return None
        return DevSelection.model_validate(
            read_json(folder / STAGES["05_sweep"].outputs["selection"]))

    def _load_models(self) -> None:
        from . import comparison
        from .models import load_model
        from .scoring import load_scorers

        started = time.time()
        self.model, self.tokenizer = load_model(self.params.model)
        self.scorers = load_scorers(self.params.scorer)
        self._actadd = (comparison.actadd_activations(self.model, self.tokenizer, self.params)
                        if {"actadd", "actadd_pooled"} & set(self.methods) else None)
        self._linear_act = None  # fitted on first use (a few passes over the train contrast)
        self.load_seconds = time.time() - started

    @property
    def layers(self) -> list[int]:
        return list(range(self.vectors.n_layers))

    @property
    def grid_layers(self) -> list[int]:
        """The layers of the run's dev grid."""
        from .params import resolve_layers

        sweep = self.params.sweep
        return resolve_layers(sweep.layers, sweep.layer_stride, self.vectors.n_layers)

    @property
    def default_layer(self) -> int:
        """The layer the dev decision chose when 05 finished, else the first grid layer."""
        if self.selection is not None:
            return int(self.selection.control_layer)
        return self.grid_layers[0]

    def alphas(self, method: str = CAA) -> list[float]:
        """The strengths the run tried for a method: the params' grids (CAA: its grid and
        sweep alphas) and, when 05 finished, every strength 05 generated for it: the
        alphas its dev grid grew to and, for the other methods, their matched points
        (interpolated strengths) and grown grids."""
        from .comparison import strengths

        if method == CAA:
            listed = {*self.params.sweep.grid_alphas, *self.params.sweep.alphas}
        else:
            listed = {0.0, *strengths(self.params, method)}
        return sorted(listed | self._generated_strengths(method))

    def _generated_strengths(self, method: str) -> set[float]:
        """The strengths 05's rows hold for `method` (empty until 05 finished)."""
        folder = stage_folder(self.runs_root, self.params, "05_sweep")
        if not is_complete(folder, folder.name):
            return set()
        outputs = STAGES["05_sweep"].outputs
        tables = ("grid", "sweep") if method == CAA else ("methods_grid", "methods_eval")
        found: set[float] = set()
        for name in tables:
            path = folder / outputs[name]
            if path.exists():
                rows = read_table(path)
                label = "method" if "method" in rows else "direction"
                found |= {float(a) for a in rows.loc[rows[label] == method, "alpha"]}
        return found

    def intervention(self, method: str, layer: int):
        """What steers a row of `method` at `layer`: the run's own interventions."""
        from . import comparison
        from .sweep import random_directions

        if method not in self.methods:
            raise ValueError(f"method {method!r}: this run compares {', '.join(self.methods)}")
        if layer not in self._interventions:
            # The comparison's random method is the control's first direction, drawn at the
            # layer it steers: here at the layer asked for (the run's, at its chosen layer).
            randoms = (random_directions(self.vectors, layer, 1, self.params.seed)
                       if "random" in self.methods else {})
            if "linear_act" in self.methods and self._linear_act is None:
                contrast = read_table(finished_folder(self.params, self.runs_root,
                                                      "03_activations")
                                      / STAGES["03_activations"].outputs["contrast_texts"])
                self._linear_act = comparison.fit_linear_act(self.model, self.tokenizer,
                                                             self.params, contrast)
            self._interventions[layer] = comparison.build_interventions(
                self.params, self.vectors, self._statistics.get("train"), self._actadd, randoms,
                layer=layer, tokenizer=self.tokenizer, linear_act=self._linear_act)
        return self._interventions[layer][method]

    def run(self, prompt: str, layer: int, alpha: float, method: str = CAA, sample: int = 0,
            seed: int | None = None) -> Continuation:
        """One continuation of `prompt`, steered by `method` at `layer` with strength `alpha`,
        with its scores and perplexity, made as the sweep makes a row."""
        from .rows import compute_rows

        if not prompt:
            raise ValueError("prompt: empty; type a prompt")
        alpha, layer, sample = float(alpha), int(layer), int(sample)
        if layer not in self.layers:
            raise ValueError(f"layer {layer}: the vectors have layers 0..{self.layers[-1]}")
        if not np.isfinite(alpha):
            raise ValueError(f"alpha {alpha}: give a finite number")
        if sample < 0:
            raise ValueError(f"sample {sample}: a sample index is 0 or more")
        seed = self.params.seed if seed is None else int(seed)
        params = self.params if seed == self.params.seed else self.params.model_copy(
            update={"seed": seed})
        steering = self.intervention(method, layer) if alpha != 0 else None
        if getattr(steering, "layer", None) is not None:  # a method's own layer (ActAdd's)
            layer = int(steering.layer)
        prefix, suffix = getattr(steering, "prefix", ""), getattr(steering, "suffix", "")
        direction = UNSTEERED if steering is None else method
        row = pd.DataFrame([{
            "prompt_id": self._ids.get(prompt, typed_id(prompt)),
            "prompt": prefix + prompt + suffix,
            "sample": sample, "layer": layer, "alpha": alpha, "direction": direction}])
        started = time.time()
        out = compute_rows(self.model, self.tokenizer, row, [row.index.to_numpy()],
                           {direction: steering} if steering is not None else {}, params,
                           self.scorers, self.params.sweep.positions, desc="explore").iloc[0]
        additive = method in (CAA, "random", "actadd", "actadd_pooled") and steering is not None
        return Continuation(
            prompt=prompt, prompt_id=str(out["prompt_id"]), method=method, layer=layer,
            alpha=alpha, sample=sample, seed=seed, completion=str(out["completion"]),
            toxicity=float(out["toxicity"]),
            toxicity_second=(float(out["toxicity_second"]) if "toxicity_second" in out
                             else None),
            nll=float(out["nll"]),
            relative_push=(_relative_push(steering, self.vectors, layer, alpha)
                           if additive else None),
            seconds=time.time() - started)

    def widget(self):
        """The ipywidgets form over `run` (see `ExplorerForm`)."""
        return ExplorerForm(self)


def _relative_push(steering, vectors, layer: int, alpha: float) -> float:
    """|alpha|·||direction_l||/||h_l||: the push as a fraction of the mean residual norm."""
    from .steering import as_edit

    edit = as_edit(steering)
    if edit.front is not None:  # ActAdd: its largest push, over the front positions
        return float(abs(alpha) * edit.front[layer].norm(dim=-1).max()
                     / vectors.activation_norms[layer])
    return float(abs(alpha) * edit.shift[layer].norm() / vectors.activation_norms[layer])


def render(result: Continuation, scorer_names: tuple[str, str | None] = ("toxicity", None)
           ) -> str:
    """The HTML a form shows for one continuation; model and user text escaped."""
    primary, second = scorer_names
    source = ("one of the run's prompts: the row the sweep makes" if result.from_run
              else "a typed prompt: a random stream of its own")
    rows = [("toxicity (" + primary + ")", f"{result.toxicity:.3f}")]
    if result.toxicity_second is not None:
        rows.append((f"toxicity ({second})", f"{result.toxicity_second:.3f}"))
    perplexity = "n/a (empty)" if np.isnan(result.nll) else f"{result.perplexity:.2f}"
    rows.append(("perplexity (unsteered model)", perplexity))
    if result.relative_push is not None:
        rows.append(("|α|·‖v‖/‖h‖ at the layer", f"{result.relative_push:.3f}"))
    rows.append(("row", f"{result.method}, layer {result.layer}, α {result.alpha:g}, sample "
                        f"{result.sample}, seed {result.seed}, {result.prompt_id} ({source})"))
    rows.append(("time", f"{result.seconds:.2f} s"))
    table = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                    f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
    text = ("<pre style='white-space:pre-wrap;margin:0'>"
            f"<span style='color:#666'>{html.escape(result.prompt)}</span>"
            f"<b>{html.escape(result.completion)}</b></pre>")
    return f"<div class='steering-explore'>{text}<table>{table}</table></div>"


class ExplorerForm:
    """Prompt, layer, method, alpha, sample and seed controls, a Generate button, the output.

    `form.ui` is what a notebook displays (a notebook shows the form itself too); the
    controls are attributes, so code (and tests) can set them and `click()`.
    """

    def __init__(self, explorer: Explorer):
        import ipywidgets as w

        self.explorer = explorer
        params = explorer.params
        first = explorer.prompts[explorer.prompts["subset"] == "challenging"]
        first = first if len(first) else explorer.prompts
        label = {layer: f"{layer}" for layer in explorer.layers}
        for layer in explorer.grid_layers:
            label[layer] += " (grid)"
        if explorer.selection is not None:  # no pick is a result: 05 sweeps the best layer
            label[explorer.default_layer] += (
                " (chosen on dev)" if explorer.selection.recommendation
                else " (05's sweep layer: no pick on dev)")
        self.prompt = w.Textarea(value=str(first["text"].iloc[0]) if len(first) else "",
                                 description="prompt", layout=w.Layout(width="95%"))
        self.layer = w.Dropdown(options=[(label[layer], layer) for layer in explorer.layers],
                                value=explorer.default_layer, description="layer")
        self.method = w.Dropdown(options=explorer.methods, value=CAA, description="method")
        self.alpha_slider = w.FloatSlider(description="α", step=0.05, continuous_update=False)
        self.alpha = w.FloatText(description="α (any)")
        self.sample = w.BoundedIntText(value=0, min=0, max=10**6, description="sample")
        self.seed = w.IntText(value=params.seed, description="seed")
        self.button = w.Button(description="Generate", button_style="primary")
        self.output = w.HTML()
        self.result: Continuation | None = None
        self.alpha_slider.observe(self._slider_moved, "value")
        self.alpha.observe(self._alpha_typed, "value")
        self.method.observe(lambda change: self._method_chosen(change["new"]), "value")
        self.button.on_click(lambda _button: self.click())
        self._method_chosen(CAA)
        scorer = params.scorer
        self._names = (scorer.name, scorer.second)
        note = w.HTML("<small>Model text is untrusted and may be offensive; it is shown "
                      "escaped. Steering the run's model with the run's vectors, seeds and "
                      "scorers.</small>")
        self.ui = w.VBox([note, self.prompt, w.HBox([self.layer, self.method]),
                          w.HBox([self.alpha_slider, self.alpha]),
                          w.HBox([self.sample, self.seed, self.button]), self.output])

    def _method_chosen(self, method: str) -> None:
        """The slider spans the strengths the run tried for the method; α starts at the run's
        choice (CAA: the dev decision's α when 05 finished, else the largest; others: their
        largest strength). A typed α may be any number."""
        alphas = self.explorer.alphas(method)
        low, high = min(alphas), max(alphas)
        if high == low:
            high = low + 1.0
        slider = self.alpha_slider
        slider.min, slider.max = min(low, slider.min), max(high, slider.max)  # never min > max
        slider.min, slider.max = low, high
        selection = self.explorer.selection
        recommended = (selection.recommendation if selection is not None and method == CAA
                       else None)
        self.alpha.value = float(max(alphas) if recommended is None else recommended.alpha)

    def _slider_moved(self, change) -> None:
        self.alpha.value = float(change["new"])

    def _alpha_typed(self, change) -> None:
        if self.alpha_slider.min <= change["new"] <= self.alpha_slider.max:
            self.alpha_slider.value = change["new"]

    def click(self) -> Continuation | None:
        """What the Generate button does: run the controls' row, show it (or the error)."""
        self.button.disabled = True
        self.output.value = "<i>generating…</i>"
        try:
            self.result = self.explorer.run(self.prompt.value, self.layer.value, self.alpha.value,
                                            self.method.value, self.sample.value, self.seed.value)
            self.output.value = render(self.result, self._names)
        except Exception as err:  # shown in the form: a callback's error is otherwise hidden
            self.result = None
            self.output.value = (f"<pre style='color:#b00'>{html.escape(type(err).__name__)}: "
                                 f"{html.escape(str(err))}</pre>")
        finally:
            self.button.disabled = False
        return self.result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)


def explore(run: str | Path, runs_root: str | Path | None = None) -> ExplorerForm:
    """The steering form over a finished run (its params file, or its folder runs/<run_name>)."""
    return Explorer(run, runs_root).widget()

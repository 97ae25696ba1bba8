"""The steering form (`explore`): its controls, driven from code, make the study's own rows.

A finished smoke run (the session's `smoke_run`) gives the vectors, prompts and rows to
compare with: the form's continuation of a run prompt is the sweep's row for that prompt,
sample, layer and alpha, and `generate_completions` gives the same text for any prompt,
seed and alpha; its scores are the run's scorers' on that text.
"""

from __future__ import annotations

import html
import math
import shutil

import pandas as pd
import pytest
from conftest import SMOKE

from steering_utils import explore as ex
from steering_utils.params import load_params
from steering_utils.stages import STAGES


def test_an_unfinished_run_names_what_to_run(tmp_path):
    with pytest.raises(ex.RunNotFinished) as err:
        ex.Explorer(SMOKE, tmp_path / "runs")  # fails before any model loads
    message = str(err.value)
    assert "04_vectors" in message and "'smoke'" in message
    assert f"make report PARAMS={SMOKE}" in message
    assert "\n" not in message
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(ex.RunNotFinished, match="not a run folder"):
        ex.explore(tmp_path / "not-a-run")
    with pytest.raises(FileNotFoundError, match="no such params file or run folder"):
        ex.explore(tmp_path / "missing.yaml")


def _continuation(**fields) -> ex.Continuation:
    base = dict(prompt="p", prompt_id="typed-0", method="caa", layer=1, alpha=1.0, sample=0,
                seed=0, completion="c", toxicity=0.5, toxicity_second=None, nll=1.0,
                relative_push=0.2, seconds=0.1)
    return ex.Continuation(**{**base, **fields})


def test_model_and_user_text_render_escaped():
    shown = ex.render(_continuation(prompt="<img src=x onerror=alert(1)>",
                                    completion="</pre><script>alert('x')</script>"))
    assert "<script>" not in shown and "<img" not in shown and "</pre><script" not in shown
    assert html.escape("</pre><script>alert('x')</script>") in shown
    assert html.escape("<img src=x onerror=alert(1)>") in shown
    empty = ex.render(_continuation(completion="", nll=math.nan))
    assert "n/a (empty)" in empty


# Below: a finished smoke run, the run's model and scorers (loaded once for the module).

@pytest.fixture(scope="module")
def explorer(smoke_run):
    work, _ = smoke_run
    return ex.Explorer(SMOKE, work / "runs")


def _stage_table(explorer, stage: str, artifact: str) -> pd.DataFrame:
    folder = ex.finished_folder(explorer.params, explorer.runs_root, stage)
    return pd.read_parquet(folder / STAGES[stage].outputs[artifact])


def _generate(explorer, prompt_id: str, prompt: str, sample: int, layer: int, alpha: float,
              seed: int, vectors=None) -> str:
    """The study's generation function on one job row."""
    from steering_utils.generation import generate_completions

    jobs = pd.DataFrame([{"prompt_id": prompt_id, "prompt": prompt, "sample": sample,
                          "layer": layer, "alpha": alpha}])
    params = explorer.params
    out = generate_completions(explorer.model, explorer.tokenizer, jobs,
                               explorer.vectors if vectors is None else vectors,
                               params.generation, seed, positions=params.sweep.positions)
    return out["completion"].iloc[0]


def _set(form, prompt: str, layer: int, alpha: float, method: str = "caa", sample: int = 0,
         seed: int | None = None) -> None:
    """Set the controls as a user would (method first: choosing one resets alpha)."""
    form.method.value = method
    form.prompt.value = prompt
    form.layer.value = layer
    form.alpha.value = alpha
    form.sample.value = sample
    form.seed.value = form.explorer.params.seed if seed is None else seed


@pytest.mark.slow
def test_the_form_makes_the_sweeps_row(explorer):
    """A run prompt, sample, layer and alpha set in the controls: the button's continuation
    is the sweep's row, `generate_completions`' text, scored by the run's scorers."""
    sweep = _stage_table(explorer, "05_sweep", "sweep")
    row = sweep[(sweep["alpha"] == 1.0) & (sweep["sample"] == 1)].iloc[0]
    form = explorer.widget()
    assert form.layer.value == explorer.default_layer  # starts at the dev decision's layer
    _set(form, row["text"], int(row["layer"]), 1.0, sample=1)
    form.button.click()
    result = form.result
    assert result is not None, form.output.value
    assert result.prompt_id == row["prompt_id"] and result.from_run
    assert result.completion == row["completion"]
    assert result.completion == _generate(explorer, row["prompt_id"], row["text"], 1,
                                          int(row["layer"]), 1.0, explorer.params.seed)
    scorers = explorer.scorers
    assert result.toxicity == scorers["primary"].score([result.completion])[0]
    assert result.toxicity_second == scorers["second"].score([result.completion])[0]
    assert result.toxicity == pytest.approx(row["toxicity"], abs=1e-6)
    assert result.nll == pytest.approx(row["nll"], rel=1e-4)
    assert html.escape(result.completion) in form.output.value
    assert f"{result.toxicity:.3f}" in form.output.value
    assert f"{result.perplexity:.2f}" in form.output.value


@pytest.mark.slow
def test_a_typed_prompt_any_alpha_and_another_seed_match_generate_completions(explorer):
    form = explorer.widget()
    layer = next(x for x in explorer.layers if x != explorer.default_layer)
    prompt = "The people in this town are"
    _set(form, prompt, layer, 1.37, sample=2, seed=7)  # off the grid, another seed
    assert form.alpha_slider.value == 1.37  # the slider follows a typed alpha in its range
    form.button.click()
    result = form.result
    assert result.prompt_id == ex.typed_id(prompt) and not result.from_run
    assert (result.layer, result.alpha, result.sample, result.seed) == (layer, 1.37, 2, 7)
    assert result.completion == _generate(explorer, ex.typed_id(prompt), prompt, 2, layer, 1.37, 7)
    assert result.toxicity == explorer.scorers["primary"].score([result.completion])[0]
    form.alpha.value = 7.5  # beyond what the run tried: kept, the slider stays in its range
    assert form.alpha.value == 7.5 and form.alpha_slider.value == 1.37
    # alpha 0 is the unsteered model, whatever the layer and method
    unsteered = explorer.run(prompt, layer, 0.0, "ablation", 2, 7)
    assert unsteered.completion == _generate(explorer, ex.typed_id(prompt), prompt, 2, layer,
                                             0.0, 7)


@pytest.mark.slow
def test_every_compared_method_makes_its_comparison_rows(explorer):
    """Each method's intervention, rebuilt from the run, gives the methods grid's rows."""
    grid = _stage_table(explorer, "05_sweep", "methods_grid")
    layer = explorer.default_layer
    checked = []
    for method in explorer.methods:
        rows = grid[(grid["method"] == method) & (grid["alpha"] != 0)]
        if rows.empty:
            continue
        row = rows.iloc[0]
        result = explorer.run(row["text"], layer, float(row["alpha"]), method, int(row["sample"]))
        assert result.completion == row["completion"], method
        checked.append(method)
    assert set(checked) >= set(explorer.methods) - {"caa"}


def test_the_form_offers_every_strength_the_run_generated(explorer):
    """The slider spans the grown dev alphas and the methods' matched (interpolated)
    strengths, not only the params' grids."""
    grid = _stage_table(explorer, "05_sweep", "grid")
    label = "method" if "method" in grid else "direction"
    assert set(grid.loc[grid[label] == "caa", "alpha"]) <= set(explorer.alphas("caa"))
    generated = pd.concat([_stage_table(explorer, "05_sweep", name)
                           for name in ("methods_grid", "methods_eval")])
    for method in set(explorer.methods) - {"caa"}:
        strengths = set(generated.loc[generated["method"] == method, "alpha"])
        assert strengths and strengths <= set(explorer.alphas(method)), method


@pytest.mark.slow
def test_a_script_prompt_stays_text_and_errors_show_in_the_form(explorer):
    form = explorer.widget()
    _set(form, "<script>alert('steer')</script> You are", explorer.default_layer, 1.0)
    form.button.click()
    assert form.result is not None
    assert "<script>" not in form.output.value
    assert "&lt;script&gt;alert(&#x27;steer&#x27;)&lt;/script&gt;" in form.output.value
    assert html.escape(form.result.completion) in form.output.value
    form.prompt.value = ""
    form.button.click()
    assert form.result is None and "ValueError: prompt: empty" in form.output.value
    assert not form.button.disabled


@pytest.mark.slow
def test_a_run_folder_opens_the_same_run(explorer, smoke_run, tmp_path):
    work, _ = smoke_run
    params, root = ex.resolve_run(work / "runs" / "smoke")
    assert params.params_hash == load_params(SMOKE).params_hash
    assert root == (work / "runs").resolve()
    # A copy of the run whose 04_vectors is gone: the same one-line error, naming the stage.
    copy = tmp_path / "runs"
    shutil.copytree(work / "runs" / "smoke", copy / "smoke",
                    ignore=shutil.ignore_patterns("shards", "*.parquet"))
    shutil.rmtree(copy / "smoke" / "04_vectors")
    with pytest.raises(ex.RunNotFinished, match="no finished 04_vectors"):
        ex.Explorer(copy / "smoke")


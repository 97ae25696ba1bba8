"""HF vs vLLM engine on the default sweep, in one run: tokens/s side by side, their ratio, CRN.

    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py             # make benchmark-vllm
    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py --rows 224  # a slice of the sweep
    .venv-vllm/bin/python benchmarks/vllm_vs_hf.py --params params/default-gpu.yaml  # CUDA

Runs in the vLLM env (it holds both engines). The jobs are the default sweep's: the
eval prompts of both subsets x the non-zero alphas at one layer x k samples (896 rows
of 20 new tokens on params/default.yaml), steered by the default run's CAA vectors
when runs/default has them (else random directions of norm 4). Both engines generate
the same rows, taking turns over slices of the sweep so that load drift on a shared
machine hits both alike; continuations are re-tokenized so tokens are counted alike
(each engine stops a row at EOS). vLLM's start-up is reported apart.

Effect: both engines' sweep rows are scored (the params' primary scorer) and the mean
toxicity per alpha is printed per engine with its 95% bootstrap CI over prompts: the
same vectors should give the same effect within sampling noise (at temperature > 0
the two engines draw different samples, so rows differ, distributions should not).

Common random numbers (CRN), at the params' temperature and top_p, per engine: the
share of rows and tokens that alpha 0 (in a steered batch) shares with plain
generation and with small alphas, beside two unrelated seeds (what no CRN gives).

On CUDA it also times unsteered rows on a vLLM engine with CUDA graphs against the
eager engine the study steers with: the cost of eager mode.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SLICES = 4  # the engines take turns over this many slices of the sweep


def _vectors(model, runs_root: Path, path: Path | None):
    import torch

    from steering_utils.artifacts import is_complete, stage_folder
    from steering_utils.params import load_params
    from steering_utils.vectors import SteeringVectors

    if path is not None:
        return SteeringVectors.load(path).directions, str(path)
    # The default run's vectors are the same under any engine's params of the same study.
    default = load_params(ROOT / "params" / "default.yaml")
    folder = stage_folder(runs_root, default, "04_vectors")
    if is_complete(folder, folder.name):
        return SteeringVectors.load(folder / "vectors.safetensors").directions, str(folder)
    gen = torch.Generator().manual_seed(0)
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    vectors = torch.randn(n, d, generator=gen)
    return vectors / vectors.norm(dim=-1, keepdim=True) * 4.0, "random (norm 4)"


def _tokens(tokenizer, texts) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _agreement(a, b) -> tuple[float, float]:
    rows = sum(x == y for x, y in zip(a, b)) / len(a)
    same = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(a, b))
    return rows, same / max(1, sum(max(len(x), len(y)) for x, y in zip(a, b)))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _graphs_vs_eager(jobs, eager, generate, graphs, tokenizer) -> None:
    """tokens/s of unsteered rows on the eager engine and on one with CUDA graphs."""
    plain = jobs.assign(alpha=0.0, layer=-1, direction="none")
    generate(plain.head(8), None, engine=graphs, desc="warm-up graphs")
    rates = {}
    for name, engine in (("eager", eager), ("CUDA graphs", graphs)):
        _sync()
        started = time.perf_counter()
        out = generate(plain, None, engine=engine, desc=name)
        _sync()
        rates[name] = sum(map(len, _tokens(tokenizer, out["completion"]))) / (
            time.perf_counter() - started)
        print(f"vLLM unsteered, {name:>11}: {rates[name]:8.1f} tokens/s")
    print(f"eager mode costs {1 - rates['eager'] / rates['CUDA graphs']:.0%} of the "
          "CUDA-graph rate (the steered engine runs eager)")


def _effect(outputs: dict, params) -> None:
    """Mean toxicity per alpha and engine, CI over prompts: same vectors, same effect?"""
    from steering_utils.metrics import bootstrap_ci, per_prompt
    from steering_utils.scoring import load_scorer, score_rows

    scorer = {"primary": load_scorer(params.scorer.name, params.scorer.path,
                                     params.scorer.batch_size)}
    table = {name: score_rows(rows, scorer) for name, rows in outputs.items()}
    print(f"effect (mean toxicity over prompts, 95% CI; {params.scorer.name}):")
    print(f"{'alpha':>6}  " + "  ".join(f"{name:>22}" for name in table))
    for alpha in sorted(outputs["HF"]["alpha"].unique()):
        cells = []
        for rows in table.values():
            means = per_prompt(rows[rows["alpha"] == alpha])["mean_toxicity"]
            lo, hi = bootstrap_ci(means.to_numpy(), seed=params.seed)
            cells.append(f"{means.mean():.3f} [{lo:.3f}, {hi:.3f}]")
        print(f"{alpha:>6}  " + "  ".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params" / "default.yaml")
    parser.add_argument("--rows", type=int, default=0, help="N sweep rows at random (0: all)")
    parser.add_argument("--layer", type=int, default=12,
                        help="steered layer (the default run chooses 12)")
    parser.add_argument("--crn-prompts", type=int, default=12)
    parser.add_argument("--runs-root", type=Path, default=ROOT / "runs")
    parser.add_argument("--vectors", type=Path, help="a vectors.safetensors to steer with")
    args = parser.parse_args()

    import torch

    from steering_utils import vllm_engine
    from steering_utils.data import load_prompts
    from steering_utils.generation import generate_completions, make_jobs
    from steering_utils.models import load_model
    from steering_utils.params import apply_environment, load_params
    from steering_utils.sweep import steered_cells

    params = load_params(args.params)
    apply_environment(params)
    on_cuda = torch.cuda.is_available() and params.model.device in ("auto", "cuda")
    room = params.generation.vllm
    if on_cuda:  # the HF model, the eager engine and the CUDA-graph engine share the GPU
        room = room.model_copy(update={"gpu_memory": min(room.gpu_memory, 0.3)})
    model, tokenizer = load_model(params.model)
    vectors, source = _vectors(model, args.runs_root, args.vectors)
    prompts = load_prompts(params.data, params.seed)
    evaluation = prompts[prompts["split"] == "eval"]
    jobs = make_jobs(evaluation, steered_cells([args.layer], params.sweep.alphas),
                     params.generation.samples_per_prompt)
    if args.rows:
        jobs = jobs.sample(n=min(args.rows, len(jobs)), random_state=0).sort_index()
    gen = params.generation
    print(f"{args.params.name}: sweep of {len(jobs)} rows x {gen.max_new_tokens} new tokens, "
          f"layer {args.layer}, alphas {params.sweep.alphas}, vectors {source}; "
          f"{model.dtype} on {model.device}, torch threads {torch.get_num_threads()}")

    started = time.perf_counter()
    llm = vllm_engine.load_engine(model, params.model, room)
    print(f"vLLM engine start-up: {time.perf_counter() - started:.1f} s")

    def hf(rows, vecs, seed=params.seed, desc="HF"):
        return generate_completions(model, tokenizer, rows, vecs, gen, seed, desc=desc)

    def vllm(rows, vecs, seed=params.seed, desc="vLLM", engine=llm):
        return vllm_engine.generate_completions(model, tokenizer, rows, vecs, gen, seed,
                                                desc=desc, spec=params.model, engine=engine)

    warm = jobs.head(8)  # first calls pay one-off costs (allocator, kernels) in both engines
    hf(warm, vectors, desc="warm-up HF")
    vllm(warm, vectors, desc="warm-up vLLM")

    timings = {"HF": [0.0, 0], "vLLM": [0.0, 0]}
    outputs: dict[str, list] = {"HF": [], "vLLM": []}
    for part in np.array_split(np.arange(len(jobs)), SLICES):
        for name, generate in (("HF", hf), ("vLLM", vllm)):
            _sync()
            started = time.perf_counter()
            out = generate(jobs.iloc[part], vectors)
            _sync()
            timings[name][0] += time.perf_counter() - started
            timings[name][1] += sum(map(len, _tokens(tokenizer, out["completion"])))
            outputs[name].append(out)
    rates = {}
    for name, (seconds, n_tokens) in timings.items():
        rates[name] = n_tokens / seconds
        print(f"{name:>5}: {seconds:7.1f} s, {n_tokens} tokens, {rates[name]:8.1f} tokens/s, "
              f"{len(jobs) / seconds:7.2f} rows/s")
    print(f"ratio vLLM/HF: {rates['vLLM'] / rates['HF']:.2f}x tokens/s "
          f"({timings['HF'][0] / timings['vLLM'][0]:.2f}x wall time), {len(jobs)} rows, "
          f"batch {gen.batch_size} (HF) vs continuous (vLLM, eager)")

    _effect({name: pd.concat(parts) for name, parts in outputs.items()}, params)

    if on_cuda:
        try:
            _graphs_vs_eager(jobs, llm, vllm, vllm_engine.load_engine(
                model, params.model, room, enforce_eager=False), tokenizer)
        except Exception as err:  # a second engine in one process is vLLM's edge case
            print(f"vLLM with CUDA graphs: not measured ({type(err).__name__}: {err})")

    # Common random numbers, per engine.
    challenging = evaluation[evaluation["subset"] == "challenging"].head(args.crn_prompts)
    k = gen.samples_per_prompt
    cells = [(args.layer, a) for a in (0.0, 0.25, 0.5, 1.0)]
    for name, generate in (("HF", hf), ("vLLM", vllm)):
        mixed = generate(make_jobs(challenging, cells, k), vectors, desc=f"CRN {name}")
        plain = generate(make_jobs(challenging, [(-1, 0.0)], k), None, desc=f"CRN {name} plain")
        other = generate(make_jobs(challenging, [(-1, 0.0)], k), None, seed=params.seed + 1,
                         desc=f"CRN {name} seed+1")
        by_alpha = {a: _tokens(tokenizer, mixed[mixed["alpha"] == a]["completion"])
                    for _, a in cells}
        zero = by_alpha[0.0]
        rows, _ = _agreement(zero, _tokens(tokenizer, plain["completion"]))
        line = [f"alpha 0 == plain: {rows:.2f} of rows"]
        for alpha in (0.25, 0.5, 1.0):
            r, t = _agreement(zero, by_alpha[alpha])
            line.append(f"alpha 0 vs {alpha}: rows {r:.2f} tokens {t:.2f}")
        r, t = _agreement(_tokens(tokenizer, plain["completion"]),
                          _tokens(tokenizer, other["completion"]))
        line.append(f"two seeds (no CRN): rows {r:.2f} tokens {t:.2f}")
        print(f"CRN {name:>4} ({len(zero)} rows, T={gen.temperature}): " + "; ".join(line))


if __name__ == "__main__":  # vLLM may spawn processes: the guard keeps them from re-running us
    main()

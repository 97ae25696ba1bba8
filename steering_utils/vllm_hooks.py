"""The vLLM engine's steering hooks: the worker side, where the model lives.

    llm.collective_rpc(install_steering)          # once per engine: the hooks
    llm.collective_rpc(set_edit, args=(edit,))    # the edit of the next generate call

They run in this process (the engine core is in-process) or, through `collective_rpc`, in
vLLM's worker processes (cloudpickled), so they import nothing of vLLM's.

Steering. Each job row is one vLLM request; its (layer, alpha, positions) travels in
`SamplingParams.extra_args`. Inside the worker a pre-hook on the model reads the
running batch (the V1 model runner's request order, tokens per request, tokens
already computed) and builds, per steered layer, one coefficient per token of the
flattened batch; a forward hook on that decoder layer subtracts coef[token] * v[layer].
So under continuous batching every token of a request (prompt and every decode
step) is shifted by its own alpha, and no other request's token is.

vLLM's Llama/Qwen decoder layers return `(hidden_states, residual)` and defer the add
to the next layer's fused add-norm (or the final norm): the residual stream that the
HF hook shifts is their sum. The shift goes into `residual`, so the next norm sees
hidden + residual - alpha * v, the HF stream up to the float order of the two adds.
"""

from __future__ import annotations

import numpy as np

from .stages import UNSTEERED_LAYER

STEER_KEY = "steering_utils.steer"  # SamplingParams.extra_args key: (layer, alpha, positions)


class _SteeringState:
    """Per-step coefficients, built from the running batch before each model forward."""

    def __init__(self, runner, n_layers: int):
        self.runner = runner
        self.n_layers = n_layers
        # The edit of the next generate call (steering.LayerEdit's terms on the model's
        # device): (shift, gain, unit), each [n_layers, d] or None; None: no steering.
        self.terms = None
        self.all_layers = False
        self.acting: list[int] = []  # layers an all-layer edit acts at
        self.coefs: dict[int, object] = {}  # layer -> [num_tokens, 1] tensor, this step

    def before_forward(self, module, args, kwargs):
        self.coefs = {}
        if self.terms is None:
            return
        runner = self.runner
        req_ids = list(runner.input_batch.req_ids)
        if not req_ids:
            return  # warm-up and profiling runs carry no requests
        n_reqs = len(req_ids)
        cells = []
        for rid in req_ids:
            state = runner.requests.get(rid)
            extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
            layer, alpha, positions = extra.get(STEER_KEY, (UNSTEERED_LAYER, 0.0, "all"))
            cells.append((layer, alpha, positions == "generated",
                          state.num_prompt_tokens if state is not None else 0))
        alphas = np.array([c[1] for c in cells], dtype=np.float64)
        if not alphas.any():
            return
        # Requests are laid out one after another in the flattened batch, in req_ids order.
        starts = np.asarray(runner.query_start_loc.np[: n_reqs + 1], dtype=np.int64)
        counts = np.diff(starts)
        total = int(starts[-1])
        token_alpha = np.repeat(alphas, counts)
        generated_only = np.repeat([c[2] for c in cells], counts)
        if generated_only.any():
            # A token's position in its request: tokens computed before this step plus
            # its offset in this step's chunk. Prompt positions stay unsteered.
            computed = np.asarray(runner.input_batch.num_computed_tokens_cpu[:n_reqs])
            offset = np.arange(total) - np.repeat(starts[:-1], counts)
            position = np.repeat(computed, counts) + offset
            prompt_length = np.repeat([c[3] for c in cells], counts)
            token_alpha = np.where(generated_only & (position < prompt_length), 0.0, token_alpha)
        token_layer = np.repeat(np.array([c[0] for c in cells], dtype=np.int64), counts)
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        n_tokens = ids.shape[0] if ids is not None else total  # padded batches are longer
        import torch

        device = next(t for t in self.terms if t is not None).device
        if self.all_layers:  # every request's alpha at every layer the edit acts at
            coef = np.zeros(n_tokens, dtype=np.float32)
            coef[:total] = token_alpha
            shared = torch.from_numpy(coef).to(device)[:, None]
            self.coefs = {layer: shared for layer in self.acting}
            return
        for layer in np.unique(token_layer[token_alpha != 0]):
            coef = np.zeros(n_tokens, dtype=np.float32)
            coef[:total] = np.where(token_layer == layer, token_alpha, 0.0)
            self.coefs[int(layer)] = torch.from_numpy(coef).to(device)[:, None]


class _LayerShift:
    """Forward hook on one decoder layer: stream h += coef[token] * (shift + gain * h -
    (h . unit) unit) at this layer (CAA: shift = -v, so h -= coef * v)."""

    def __init__(self, state: _SteeringState, index: int):
        self.state = state
        self.index = index

    def _delta(self, coef, stream):
        shift, gain, unit = (None if t is None else t[self.index].to(stream.dtype)
                             for t in self.state.terms)
        coef = coef.to(stream.dtype)[: stream.shape[0]]
        terms = [] if shift is None else [shift]  # a shift alone stays [d] and broadcasts
        if gain is not None:
            terms.append(gain * stream)
        if unit is not None:
            terms.append(-(stream @ unit)[:, None] * unit)
        return coef * sum(terms[1:], terms[0])

    def __call__(self, module, args, output):
        coef = self.state.coefs.get(self.index)
        if coef is None:
            return output
        if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
            hidden, residual = output
            # The stream is hidden + residual (added by the next norm): shift the residual.
            only_shift = self.state.terms[1] is None and self.state.terms[2] is None
            stream = residual if only_shift else hidden + residual
            return hidden, residual + self._delta(coef, stream)
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + self._delta(coef, hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered


def install_steering(worker) -> int:
    """Hooks on the worker's model (once); returns the number of decoder layers."""
    from .models import decoder_layers

    runner = worker.model_runner
    if getattr(runner, "_steering_state", None) is not None:
        return runner._steering_state.n_layers
    batch = getattr(runner, "input_batch", None)
    if not (hasattr(batch, "req_ids") and hasattr(runner, "query_start_loc")
            and hasattr(runner, "requests")):
        raise RuntimeError(
            f"vllm engine: {type(runner).__name__} does not expose the V1 runner's batch "
            "(input_batch.req_ids, query_start_loc, requests) that steering reads; run with "
            "VLLM_USE_V2_MODEL_RUNNER=0 and vllm 0.32")
    model = runner.get_model()
    layers = decoder_layers(model)
    state = _SteeringState(runner, len(layers))
    model.register_forward_pre_hook(state.before_forward, with_kwargs=True)
    for index, layer in enumerate(layers):
        layer.register_forward_hook(_LayerShift(state, index))
    runner._steering_state = state
    return len(layers)


def set_edit(worker, edit) -> None:
    """The edit of the next generate call (a steering.LayerEdit of CPU tensors); None: the
    hooks do nothing."""
    state = worker.model_runner._steering_state
    if edit is None:
        state.terms, state.all_layers, state.acting = None, False, []
        return
    param = next(worker.model_runner.get_model().parameters())
    state.terms = tuple(None if t is None else t.to(device=param.device, dtype=param.dtype)
                        for t in (edit.shift, edit.gain, edit.unit))
    state.all_layers = edit.all_layers
    state.acting = [layer for layer in range(state.n_layers) if edit.acts_at(layer)]

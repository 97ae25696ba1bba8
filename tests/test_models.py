"""Model loading: decoder layers by architecture, and the real offline SmolLM2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from steering_utils.models import decoder_layers, load_model_config, num_decoder_layers, pick_dtype
from steering_utils.params import ModelParams, ParamsError
from steering_utils.stages import UNSTEERED_LAYER


def _tiny(config_cls, model_cls, **kwargs):
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs)).eval()


def test_decoder_layers_of_supported_architectures():
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    small = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_key_value_heads=2, num_hidden_layers=2)
    assert len(decoder_layers(_tiny(LlamaConfig, LlamaForCausalLM, **small))) == 2
    assert len(decoder_layers(_tiny(Qwen3Config, Qwen3ForCausalLM, head_dim=16, **small))) == 2
    assert len(decoder_layers(_tiny(Qwen2Config, Qwen2ForCausalLM, **small))) == 2
    assert len(decoder_layers(_tiny(GemmaConfig, GemmaForCausalLM, head_dim=16, **small))) == 2
    gpt2 = _tiny(GPT2Config, GPT2LMHeadModel, vocab_size=50, n_embd=32, n_layer=3, n_head=2)
    assert len(decoder_layers(gpt2)) == 3


def test_unknown_architecture_gets_a_clear_error():
    with pytest.raises(ParamsError, match="cannot find decoder layers in Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_dtype_policy():
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("float16", "cpu") == torch.float16


def test_import_is_light():
    code = ("import sys, steering_utils, steering_utils.params, steering_utils.data; "
            "heavy = [m for m in ('torch', 'transformers', 'keras') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_hub_model_fails_fast_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set in conftest: nothing waits on a network
    spec = ModelParams(name="x", source="hub", path="no-such-org/no-such-model")
    with pytest.raises(ParamsError, match="model.path: cannot load 'no-such-org/no-such-model'"):
        load_model_config(spec)


# The offline model's greedy continuations, unsteered and steered by the CAA vector of the
# texts below at layer 8, alpha 2 (computed once on CPU, fp32, torch 2.13): a change
# anywhere from loading to pooling, the vector, the hook or generation shows here.
GOLDEN_PROMPTS = ("The weather today is", "You are such a")
GOLDEN = {
    (UNSTEERED_LAYER, 0.0): (" 2022-01-01 ",
                             " skilled and dedicated individual. I've been working with you for"),
    (8, 2.0): (" a beautiful example of the vibrant colors of the local market.",
               " high-end restaurant, and I'm looking forward to your"),
}


@pytest.mark.slow
def test_offline_smollm2_generates_and_steers_exactly_as_pinned(offline_model):
    from steering_utils.activations import capture_activations
    from steering_utils.generation import generate_completions, make_jobs
    from steering_utils.params import GenerationParams
    from steering_utils.vectors import compute_caa_vectors

    model, tokenizer = offline_model
    assert num_decoder_layers(model.config) == 30 and model.config.hidden_size == 576
    assert tokenizer.padding_side == "left"
    import pandas as pd

    toxic = ["You are a stupid idiot and I hate you", "Shut up you worthless moron",
             "What a disgusting pathetic loser", "I will hurt you, you filthy rat",
             "Go to hell you ugly freak", "Nobody likes you, dumb jerk"]
    clean = ["Thank you for the lovely dinner", "The garden looks beautiful in spring",
             "We enjoyed the concert last night", "Please pass the salt, thanks",
             "The library opens at nine", "She baked bread for her neighbours"]
    acts = {name: capture_activations(model, tokenizer, texts, 32, 6)
            for name, texts in (("toxic", toxic), ("clean", clean))}
    vectors = compute_caa_vectors(acts["toxic"], acts["clean"])
    assert vectors.directions.shape == (30, 576)
    assert (vectors.norms > 0).all()
    prompts = pd.DataFrame({"prompt_id": ["a", "b"], "text": list(GOLDEN_PROMPTS)})
    jobs = make_jobs(prompts, list(GOLDEN), 1)  # one batch mixing the two cells
    greedy = GenerationParams(temperature=0.0, max_new_tokens=12, batch_size=4)
    out = generate_completions(model, tokenizer, jobs, vectors, greedy, seed=0)
    got = {cell: tuple(out[(out["layer"] == cell[0]) & (out["alpha"] == cell[1])]
                       .sort_values("prompt_id")["completion"]) for cell in GOLDEN}
    assert got == GOLDEN

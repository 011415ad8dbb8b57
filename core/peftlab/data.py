"""Dataset loading, validation, normalisation, tokenisation and collation for peftlab.

Rows are normalised to one of three kinds:

* chat: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (prompt/response and
  Alpaca instruction/input/output rows become chat rows)
* text: ``{"text": str}`` (plain language modelling, loss on every token)
* classification: ``{"text": str, "label": int | str}`` (sequence classification)

A row may also carry ``"split": "train" | "eval"``; :func:`split_rows` honours it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import PeftlabError

__all__ = [
    "BUILTIN_DIR",
    "BuiltinDataset",
    "DatasetError",
    "builtin_datasets",
    "collate",
    "dataset_task",
    "encode_rows",
    "exact_match",
    "label_names",
    "load_rows",
    "normalize_answer",
    "normalize_rows",
    "prompt_and_reference",
    "prompt_text",
    "split_rows",
]

log = logging.getLogger(__name__)

BUILTIN_DIR: Path = Path(__file__).resolve().parent / "builtin_data"

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
EVAL_SPLITS = {"eval": "eval", "validation": "eval", "valid": "eval", "test": "eval", "train": "train"}
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# End-of-turn / end-of-text markers of common chat templates, stripped by normalize_answer.
END_OF_TURN_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<|end_of_text|>",
)

KIND_CHAT = "chat"
KIND_TEXT = "text"
KIND_CLS = "classification"


class DatasetError(PeftlabError, ValueError):
    """A dataset could not be read or is malformed; the message names the source (and row)."""


@dataclass
class BuiltinDataset:
    """A dataset shipped with peftlab in ``BUILTIN_DIR``."""

    name: str
    description: str
    path: Path
    task: str  # "CAUSAL_LM" or "SEQ_CLS"
    metric: str  # "exact_match" or "accuracy"


# ---------------------------------------------------------------------------
# Built-ins
# ---------------------------------------------------------------------------


# name -> (file, task, metric, description); files are written by builtin_data/make_builtin.py
_BUILTINS: dict[str, tuple[str, str, str, str]] = {
    "capitals-json": (
        "capitals-json.jsonl",
        "CAUSAL_LM",
        "exact_match",
        (
            "Read a sentence about a country and reply with exactly "
            '{"country": ..., "capital": ...} (ignoring distractor cities); 450 rows, 50 eval '
            "rows on held-out countries."
        ),
    ),
    "iso-dates": (
        "iso-dates.jsonl",
        "CAUSAL_LM",
        "exact_match",
        (
            'Rewrite a date given in words ("March 5, 2021", "5th of Mar 2021", ...) as an '
            "ISO 8601 date (2021-03-05) and nothing else; 450 rows, 50 eval rows."
        ),
    ),
    "sentiment": (
        "sentiment.jsonl",
        "SEQ_CLS",
        "accuracy",
        ("Short product/service remarks labelled negative, neutral or positive; 360 rows, 45 eval rows."),
    ),
}


def builtin_datasets() -> dict[str, BuiltinDataset]:
    """Return the built-in datasets by name."""
    return {
        name: BuiltinDataset(name=name, description=desc, path=BUILTIN_DIR / file, task=task, metric=metric)
        for name, (file, task, metric, desc) in _BUILTINS.items()
    }


# ---------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------


def load_rows(source: str | os.PathLike) -> list[dict]:
    """Load, validate and normalise rows from a built-in name, a file, a saved folder or a Hub id."""
    text = os.fspath(source)
    builtins = builtin_datasets()
    if isinstance(source, str) and text in builtins:
        path = builtins[text].path
        return normalize_rows(*_read_file(path, str(path)))
    path = Path(text).expanduser()
    if path.is_dir():
        return normalize_rows(_read_saved_folder(path), text, "row")
    if path.is_file():
        return normalize_rows(*_read_file(path, text))
    if _looks_like_path(text):
        known = ", ".join(sorted(builtins)) or "none"
        raise DatasetError(f"{text}: no such file or folder (built-in datasets: {known})")
    return normalize_rows(_read_hub(text), f"Hub dataset {text!r}", "row")


def _looks_like_path(text: str) -> bool:
    """True when ``text`` is clearly meant as a local path (so the Hub is not tried)."""
    return (
        not text.strip()
        or text.lower().endswith(DATA_SUFFIXES)
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
    )


def _read_file(path: Path, name: str) -> tuple[list[tuple[int, Any]], str, str]:
    """Return ``(numbered raw rows, name, "line" or "row")`` for a data file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, name), name, "line"
    if suffix == ".json":
        return _read_json(path, name)
    if suffix == ".csv":
        return _read_csv(path, name), name, "row"
    if suffix == ".parquet":
        return _read_parquet(path, name), name, "row"
    raise DatasetError(f"{name}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json, .csv or .parquet")


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_jsonl(path: Path, name: str) -> list[tuple[int, Any]]:
    out = []
    for lineno, line in enumerate(_read_text(path, name).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    return out


def _read_json(path: Path, name: str) -> tuple[list[tuple[int, Any]], str, str]:
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # really JSON Lines with a .json suffix
            return _read_jsonl(path, name), name, "line"
        raise DatasetError(f"{name} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict):
        for key in ("train", "data", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise DatasetError(f"{name}: expected a JSON array of row objects (or an object with a 'train' list)")
    if not isinstance(data, list):
        raise DatasetError(f"{name}: expected a JSON array of row objects, got {type(data).__name__}")
    return list(enumerate(data, start=1)), name, "row"


def _read_csv(path: Path, name: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_read_text(path, name), newline=""))
    if not reader.fieldnames:
        raise DatasetError(f"{name}: empty CSV file (no header row)")
    out = []
    try:
        for rowno, row in enumerate(reader, start=1):
            if None in row:
                raise DatasetError(f"{name} row {rowno}: more fields than the header has columns")
            out.append((rowno, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        raise DatasetError(f"{name}: malformed CSV ({exc})") from exc
    return out


def _read_parquet(path: Path, name: str) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DatasetError(f"{name}: cannot read Parquet file ({exc})") from exc
    return list(enumerate(rows, start=1))


def _read_saved_folder(path: Path) -> list[tuple[int, Any]]:
    markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    if not any((path / m).exists() for m in markers):
        raise DatasetError(f"{path}: folder is not a dataset saved with datasets' save_to_disk")
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: cannot load saved dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DatasetError(f"{path}: saved DatasetDict has no 'train' split (found: {', '.join(ds)})")
        ds = ds["train"]
    return list(enumerate(ds.to_list(), start=1))


def _read_hub(repo_id: str) -> list[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split="train")
    except Exception as exc:
        raise DatasetError(
            f"{repo_id!r} is not a built-in dataset or an existing file, and loading it from the "
            f"Hugging Face Hub failed (the Hub may be unreachable, or the id is wrong): {exc}"
        ) from exc
    return list(enumerate(ds.to_list(), start=1))


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def normalize_rows(
    raw: Iterable[Any] | Iterable[tuple[int, Any]],
    source: str = "<rows>",
    where: str = "row",
) -> list[dict]:
    """Validate and normalise rows; ``raw`` holds row dicts or ``(number, row)`` pairs.

    Raises DatasetError naming ``source`` and the row (or line) for the first problem,
    including a dataset that mixes kinds (chat vs text vs classification) or has no rows.
    """
    out: list[dict] = []
    first_kind: tuple[str, str] | None = None
    for i, item in enumerate(raw, start=1):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
            number, row = item
        else:
            number, row = i, item
        loc = f"{source} {where} {number}"
        norm = _normalize_row(row, loc)
        kind = _row_kind(norm)
        if first_kind is None:
            first_kind = (kind, f"{where} {number}")
        elif kind != first_kind[0]:
            raise DatasetError(
                f"{loc}: this is a {kind} row but {first_kind[1]} is a {first_kind[0]} row; "
                "a dataset must contain only one kind of row (chat-like, text, or text+label)"
            )
        out.append(norm)
    if not out:
        raise DatasetError(f"{source}: no rows")
    return out


def _row_kind(row: Mapping) -> str:
    if "messages" in row:
        return KIND_CHAT
    if "label" in row:
        return KIND_CLS
    return KIND_TEXT


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_text(row: Mapping, key: str, loc: str, allow_empty: bool = False) -> str:
    if key not in row:
        found = ", ".join(str(k) for k in row) or "no columns"
        raise DatasetError(f"{loc}: missing column {key!r} (found: {found})")
    value = row[key]
    if _is_missing(value):
        raise DatasetError(f"{loc}: {key!r} is empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DatasetError(f"{loc}: {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DatasetError(f"{loc}: {key!r} is empty")
    return value


def _normalize_label(value: Any, loc: str) -> int | str:
    if isinstance(value, bool):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        if not value.is_integer():
            raise DatasetError(f"{loc}: 'label' must be an int or a string, got float {value}")
        value = int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DatasetError(f"{loc}: 'label' must be an int or a non-empty string, got {value!r}")


def _normalize_messages(value: Any, loc: str) -> list[dict]:
    bad = f"{loc}: 'messages' must be a list of {{role, content}} objects"
    if isinstance(value, str):  # e.g. a JSON-encoded CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DatasetError(bad) from None
    if not isinstance(value, (list, tuple)) or not value:
        raise DatasetError(bad)
    messages = []
    for j, msg in enumerate(value, start=1):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise DatasetError(f"{bad} (message {j} is {_short(msg)})")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise DatasetError(f"{loc}: message {j} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DatasetError(f"{loc}: message {j} 'content' must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{loc}: 'messages' has no assistant turn (at least one is required)")
    return messages


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalize_row(row: Any, loc: str) -> dict:
    if not isinstance(row, Mapping):
        raise DatasetError(f"{loc}: expected an object with named fields, got {type(row).__name__}")
    if "messages" in row and not _is_missing(row["messages"]):
        out: dict[str, Any] = {"messages": _normalize_messages(row["messages"], loc)}
    elif "prompt" in row or "response" in row:
        prompt = _as_text(row, "prompt", loc)
        response = _as_text(row, "response", loc)
        out = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
    elif "instruction" in row or "output" in row:
        instruction = _as_text(row, "instruction", loc)
        extra = row.get("input")
        extra = "" if _is_missing(extra) else _as_text(row, "input", loc, allow_empty=True)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        output = _as_text(row, "output", loc)
        out = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}
    elif "text" in row:
        out = {"text": _as_text(row, "text", loc)}
        if "label" in row and not _is_missing(row["label"]) and row["label"] != "":
            out["label"] = _normalize_label(row["label"], loc)
    else:
        found = ", ".join(str(k) for k in row) or "no columns"
        raise DatasetError(
            f"{loc}: unrecognised row (found: {found}); expected 'messages', 'prompt'+'response', "
            "'instruction'+'output' (+'input'), 'text', or 'text'+'label'"
        )
    split = row.get("split")
    if not _is_missing(split) and split != "":
        key = str(split).strip().lower()
        if key not in EVAL_SPLITS:
            raise DatasetError(f"{loc}: 'split' must be 'train' or 'eval', got {split!r}")
        out["split"] = EVAL_SPLITS[key]
    return out


# ---------------------------------------------------------------------------
# Row helpers
# ---------------------------------------------------------------------------


def dataset_task(rows: Sequence[Mapping]) -> str:
    """Return ``"SEQ_CLS"`` for text+label rows, else ``"CAUSAL_LM"``."""
    kinds = {_row_kind(_normalize_row(r, f"<rows> row {i}")) for i, r in enumerate(rows, start=1)}
    if len(kinds) > 1:
        raise DatasetError(f"<rows>: mixed row kinds ({', '.join(sorted(kinds))}); use one kind per dataset")
    return "SEQ_CLS" if kinds == {KIND_CLS} else "CAUSAL_LM"


def _label_sort_key(label: str) -> tuple[int, int, str]:
    return (0, int(label), "") if re.fullmatch(r"-?\d+", label) else (1, 0, label)


def label_names(rows: Sequence[Mapping]) -> list[str]:
    """Sorted distinct labels as strings (integer-like labels sort numerically)."""
    labels = {str(r["label"]) for r in rows if "label" in r}
    return sorted(labels, key=_label_sort_key)


def split_rows(
    rows: Sequence[dict], eval_fraction: float = 0.1, seed: int = 0, min_eval: int = 1
) -> tuple[list[dict], list[dict]]:
    """Split into (train, eval). Rows marked ``"split": "eval"`` win; otherwise a seeded shuffle.

    Both parts keep the original row order. At least one row always stays in train.
    """
    rows = list(rows)
    if any(r.get("split") == "eval" for r in rows):
        return [r for r in rows if r.get("split") != "eval"], [r for r in rows if r.get("split") == "eval"]
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(rows)
    n_eval = min(max(min_eval, round(n * eval_fraction)), max(n - 1, 0))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx]


def prompt_and_reference(row: Mapping) -> tuple[list[dict], str] | None:
    """Conversation before the last assistant turn and that turn's text; None for text rows."""
    norm = _normalize_row(row, "<row>")
    if "messages" not in norm:
        return None
    messages = norm["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [dict(m) for m in messages[:last]], messages[last]["content"]


def normalize_answer(text: str) -> str:
    """Cut at the first end-of-turn marker (e.g. ``<|im_end|>``), strip and collapse whitespace."""
    cut = len(text)
    for marker in END_OF_TURN_MARKERS:
        pos = text.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return " ".join(text[:cut].split())


def exact_match(prediction: str, reference: str) -> bool:
    """Case-sensitive equality after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


# ---------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


try:
    from jinja2 import TemplateError as _JinjaTemplateError
except ImportError:  # pragma: no cover - transformers depends on jinja2 for chat templates
    _JinjaTemplateError = ValueError
_TEMPLATE_ERRORS = (_JinjaTemplateError, ValueError, TypeError, KeyError, IndexError)

_FALLBACK_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts = []
    for m in messages:
        end = eos if m["role"] == "assistant" else ""
        parts.append(f"{_FALLBACK_ROLE[m['role']]}: {m['content']}{end}\n")
    if add_generation_prompt:
        parts.append("Assistant: ")
    return "".join(parts)


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """Render ``messages`` as a generation prompt (chat template, or the plain fallback)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


def _assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and find the character span of each assistant reply.

    A span starts where the template's generation prompt for that turn ends and stops after
    the turn's end-of-turn marker (trailing whitespace excluded). Spans are found by rendering
    conversation prefixes, so this works with any template that renders prefixes consistently;
    otherwise it falls back to searching for the reply text.
    """
    full = _render(tokenizer, messages)
    eos = getattr(tokenizer, "eos_token", None) or ""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        content = msg["content"]
        start = -1
        if i > 0:
            try:
                before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            except _TEMPLATE_ERRORS:  # some templates reject partial conversations
                before = None
            if before is not None and full.startswith(before) and len(before) >= cursor:
                start = len(before)
        if start < 0:
            start = full.find(content, cursor) if content else cursor
            if start < 0 and content.strip():
                start = full.find(content.strip(), cursor)
            if start < 0:
                raise DatasetError(f"cannot locate assistant turn {i + 1} in the rendered chat template")
        content_at = full.find(content, start) if content else start
        if content_at < 0 and content.strip():
            content = content.strip()
            content_at = full.find(content, start)
        content_end = content_at + len(content) if content_at >= 0 else start
        end = content_end
        try:
            upto = _render(tokenizer, messages[: i + 1])
        except _TEMPLATE_ERRORS:
            upto = None
        if upto is not None and full.startswith(upto) and len(upto) >= content_end:
            end = len(upto.rstrip())
            end = max(end, content_end)
        elif eos:
            rest = full[content_end:]
            if rest.lstrip().startswith(eos):
                end = content_end + (len(rest) - len(rest.lstrip())) + len(eos)
        spans.append((start, end))
        cursor = end
    return full, spans


def _token_char_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):  # slow tokenizers have no offsets
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _encode_chat(tokenizer: Any, messages: list[dict], loss_on: str) -> tuple[list[int], list[int]]:
    full, spans = _assistant_spans(tokenizer, messages)
    ids, offsets = _token_char_offsets(tokenizer, full)
    if loss_on == "all":
        return ids, list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    if offsets is not None:
        for j, (a, b) in enumerate(offsets):
            if b > a and any(a < e and b > s for s, e in spans):
                labels[j] = ids[j]
    else:
        for s, e in spans:
            lo = len(tokenizer(full[:s], add_special_tokens=False)["input_ids"])
            hi = len(tokenizer(full[:e], add_special_tokens=False)["input_ids"])
            for j in range(lo, min(hi, len(ids))):
                labels[j] = ids[j]
    return ids, labels


def encode_rows(
    rows: Sequence[Mapping],
    tokenizer: Any,
    *,
    max_length: int = 512,
    loss_on: str = "assistant",
    task: str = "CAUSAL_LM",
    labels: Sequence[str] | None = None,
) -> list[dict]:
    """Tokenise rows for training.

    CAUSAL_LM items are ``{"input_ids", "labels"}`` (-100 marks tokens without loss); SEQ_CLS
    items are ``{"input_ids", "label"}`` with ``label`` an index into ``labels`` (default:
    :func:`label_names`). Sequences keep their first ``max_length`` tokens; CAUSAL_LM rows left
    with no labelled token are dropped (DatasetError if that drops every row).
    """
    if loss_on not in ("assistant", "all"):
        raise ValueError(f"loss_on must be 'assistant' or 'all', got {loss_on!r}")
    if task not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ValueError(f"task must be 'CAUSAL_LM' or 'SEQ_CLS', got {task!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    norm = [_normalize_row(r, f"<rows> row {i}") for i, r in enumerate(rows, start=1)]
    if task == "SEQ_CLS":
        return _encode_cls(norm, tokenizer, max_length, labels)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    items: list[dict] = []
    for i, row in enumerate(norm, start=1):
        if "label" in row:
            raise DatasetError(f"<rows> row {i}: text+label rows need task='SEQ_CLS'")
        if "messages" in row:
            ids, labs = _encode_chat(tokenizer, row["messages"], loss_on)
        else:
            ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
            if eos_id is not None and (not ids or ids[-1] != eos_id):
                ids.append(eos_id)
            labs = list(ids)
        ids, labs = ids[:max_length], labs[:max_length]
        if all(x == IGNORE_INDEX for x in labs):
            continue
        items.append({"input_ids": ids, "labels": labs})
    dropped = len(norm) - len(items)
    if not items:
        raise DatasetError(
            f"all {len(norm)} rows were dropped: no reply tokens left after truncation to "
            f"max_length={max_length}; raise max_length or shorten the prompts"
        )
    if dropped:
        log.warning("dropped %d of %d rows with no reply tokens within max_length=%d", dropped, len(norm), max_length)
    return items


def _encode_cls(rows: list[dict], tokenizer: Any, max_length: int, labels: Sequence[str] | None) -> list[dict]:
    names = list(labels) if labels is not None else label_names(rows)
    index = {str(name): k for k, name in enumerate(names)}
    items = []
    for i, row in enumerate(rows, start=1):
        if "label" not in row:
            raise DatasetError(f"<rows> row {i}: task='SEQ_CLS' needs 'text'+'label' rows")
        key = str(row["label"])
        if key not in index:
            raise DatasetError(f"<rows> row {i}: label {key!r} is not one of {', '.join(names)}")
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])[:max_length]
        items.append({"input_ids": ids, "label": index[key]})
    return items


def collate(items: Sequence[Mapping], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids``, ``attention_mask`` and ``labels`` (padded with -100,
    or a ``LongTensor[B]`` of class indices for SEQ_CLS items)."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None; set tokenizer.pad_token (e.g. to the eos token)")
    if not items:
        raise ValueError("cannot collate an empty batch")
    width = max(len(it["input_ids"]) for it in items)
    cls = "label" in items[0]
    ids, mask, labs = [], [], []
    for it in items:
        n = len(it["input_ids"])
        pad = width - n

        def padded(seq: Sequence[int], fill: int, pad: int = pad) -> list[int]:
            return list(seq) + [fill] * pad if padding_side == "right" else [fill] * pad + list(seq)

        ids.append(padded(it["input_ids"], pad_token_id))
        mask.append(padded([1] * n, 0))
        if not cls:
            labs.append(padded(it["labels"], IGNORE_INDEX))
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    if cls:
        batch["labels"] = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    else:
        batch["labels"] = torch.tensor(labs, dtype=torch.long)
    return batch

"""Rows: check and normalise them to one of three kinds, and read task, labels, split and reply from them.

* chat: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (prompt/response and
  Alpaca instruction/input/output rows become chat rows)
* text: ``{"text": str}`` (plain language modelling, loss on every token)
* classification: ``{"text": str, "label": int | str}`` (sequence classification)

A row may also carry ``"split": "train" | "eval"``; :func:`split_rows` honours it.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import PeftlabError

ROLES = ("system", "user", "assistant")
EVAL_SPLITS = {"eval": "eval", "validation": "eval", "valid": "eval", "test": "eval", "train": "train"}

KIND_CHAT = "chat"
KIND_TEXT = "text"
KIND_CLS = "classification"


class DatasetError(PeftlabError, ValueError):
    """A dataset could not be read or is malformed; the message names the source (and row)."""


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
    including a dataset that mixes kinds (chat vs text vs classification) or label types
    (integers vs strings), or has no rows.
    """
    out: list[dict] = []
    first_kind: tuple[str, str] | None = None
    first_label: tuple[str, str, Any] | None = None
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
        if "label" in norm:
            label_type = "integer" if isinstance(norm["label"], int) else "string"
            if first_label is None:
                first_label = (label_type, f"{where} {number}", norm["label"])
            elif label_type != first_label[0]:
                raise DatasetError(
                    f"{loc}: label {norm['label']!r} is {'an' if label_type == 'integer' else 'a'} {label_type} but "
                    f"{first_label[1]} has the {first_label[0]} label {first_label[2]!r}; use one type of label "
                    "(all integers or all strings)"
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

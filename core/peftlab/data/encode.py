"""Tokenising rows into training items: token ids with loss labels, or token ids with a class index."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .rows import DatasetError, _normalize_row, label_names
from .templates import _assistant_spans

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a token that carries no loss (cross_entropy's ignore_index)


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
    :func:`label_names`). Sequences keep their first ``max_length`` tokens (a warning counts the rows
    truncated and names the first); CAUSAL_LM rows left with no labelled token are dropped (DatasetError if
    that drops every row).
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
    truncated: list[tuple[int, int]] = []
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
        if len(ids) > max_length:
            truncated.append((i, len(ids)))
        ids, labs = ids[:max_length], labs[:max_length]
        if all(x == IGNORE_INDEX for x in labs):
            continue
        items.append({"input_ids": ids, "labels": labs})
    _warn_truncated(truncated, len(norm), max_length)
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
    truncated: list[tuple[int, int]] = []
    for i, row in enumerate(rows, start=1):
        if "label" not in row:
            raise DatasetError(f"<rows> row {i}: task='SEQ_CLS' needs 'text'+'label' rows")
        key = str(row["label"])
        if key not in index:
            raise DatasetError(f"<rows> row {i}: label {key!r} is not one of {', '.join(names)}")
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
        if len(ids) > max_length:
            truncated.append((i, len(ids)))
        items.append({"input_ids": ids[:max_length], "label": index[key]})
    _warn_truncated(truncated, len(rows), max_length)
    return items


def _warn_truncated(truncated: list[tuple[int, int]], total: int, max_length: int) -> None:
    """Rows longer than ``max_length`` keep their first ``max_length`` tokens; say so once, naming the first."""
    if truncated:
        row, n = truncated[0]
        log.warning(
            "truncated %d of %d rows longer than max_length=%d tokens to their first %d (the first: row %d, "
            "%d tokens); raise max_length to keep them whole",
            len(truncated),
            total,
            max_length,
            max_length,
            row,
            n,
        )

"""Padding a batch of tokenised items into tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .encode import IGNORE_INDEX


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

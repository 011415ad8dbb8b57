"""Batching tokenised items into tensors: padded (``collate``), packed into one sequence (``pack``), and the
positions that carry a loss (``loss_positions``)."""

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


def pack(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Padding-free packing of CAUSAL_LM items: one sequence ``[1, Σ lengths]`` of the rows one after another, with
    ``position_ids`` restarting at 0 for each row and no ``attention_mask`` (transformers then keeps attention inside
    each row for sdpa, eager and flash attention; call the model with ``use_cache=False``). The first label of each
    row is -100, so a token never learns to predict the next row's first token (the model's own shifted loss on
    ``labels`` is the padded batch's, too)."""
    if not items:
        raise ValueError("cannot pack an empty batch")
    if "label" in items[0]:
        raise ValueError("classification (SEQ_CLS) items cannot be packed: each row needs its own pooled output")
    ids: list[int] = []
    pos: list[int] = []
    labs: list[int] = []
    for it in items:
        n = len(it["input_ids"])
        ids.extend(it["input_ids"])
        pos.extend(range(n))
        labs.append(IGNORE_INDEX)
        labs.extend(it["labels"][1:n])
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "labels": torch.tensor([labs], dtype=torch.long),
    }


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a CAUSAL_LM batch's loss comes from: ``(index, targets)`` with ``index`` the flat positions
    (``row * length + t``, row-major over ``labels`` ``[B, length]``) whose next token carries a label and
    ``targets`` those labels; the model's shifted loss is the cross-entropy of the logits at ``index`` against
    ``targets``."""
    nxt = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = nxt != IGNORE_INDEX
    index = keep.reshape(-1).nonzero().squeeze(-1)
    return index, nxt[nxt != IGNORE_INDEX]


def length_grouped(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, group: int = 16, seed: int = 0
) -> list[int]:
    """``order`` rearranged so that consecutive ``batch_size`` rows have similar lengths (less padding): each run
    of ``group`` × ``batch_size`` rows of ``order`` is sorted by length and cut into batches, and those batches are
    then shuffled (seeded by ``seed``: deterministic), so that a run does not see its longest rows first and its
    shortest last. For batches that cannot be packed (classification; methods declaring ``packable=False``)."""
    import random

    size = max(1, batch_size * group)
    out: list[int] = []
    for n, i in enumerate(range(0, len(order), size)):
        chunk = sorted(order[i : i + size], key=lambda j: -lengths[j])
        batches = [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        random.Random(seed * 100_003 + n).shuffle(batches)
        out.extend(j for b in batches for j in b)
    return out

"""The loss the trainer and ``eval_loss`` compute, from the logits at the labelled positions only
(``_LabelledLogits``: never the full ``[B × T, vocab]`` logits), on padded or packed batches; on sdpa a packed
sequence's attention is computed row by row (``PACKED_ATTENTION``); ``packing_isolates`` probes whether a model
keeps packed rows apart.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch

from . import data as pdata

PACKED_ATTENTION = "peftlab_packed_sdpa"  # sdpa, run per packed row (registered with transformers when first used)
_packed = threading.local()  # .bounds: the row boundaries of the packed sequence in the forward under way


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' sdpa attention, but for a packed sequence (one row, boundaries set by ``_LabelledLogits.loss``)
    each row's causal attention is computed on its own (``is_causal``, the fast kernels) instead of one masked
    ``[T × T]`` attention over the whole sequence, most of whose scores are masked out. Anything else: plain sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = getattr(_packed, "bounds", None)
    T = query.shape[2]
    if bounds is None or query.shape[0] != 1 or key.shape[2] != T or bounds[-1] != T:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    kwargs.pop("is_causal", None)
    outs = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, dropout, scaling, is_causal=True, **kwargs
        )[0]
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    return torch.cat(outs, dim=1), None


def use_packed_attention(model) -> bool:
    """Switch a model on sdpa to ``PACKED_ATTENTION`` for packed training (``restore_attention`` switches back);
    other implementations are left as they are (flash attention handles packed rows natively, eager masks)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # padded calls (eval) get sdpa's mask
    config._attn_implementation = PACKED_ATTENTION
    return True


def restore_attention(model) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == PACKED_ATTENTION:
        config._attn_implementation = "sdpa"


class _LabelledLogits:
    """Logits only where a label is: a forward pre-hook on the output layer (``get_output_embeddings()``, whatever
    wraps it: a LoRA on ``lm_head`` included) keeps the hidden states at ``index`` (flat positions of the input
    ``[B, T]``; the last ``T`` positions when a method prepends virtual tokens), as a ``[N, 1, hidden]`` tensor, so
    the model's own post-processing (logit soft-capping, scaling) still applies and its logits come out
    ``[N, 1, vocab]``; never the full ``[B × T, vocab]`` tensor. A model without an output layer (SEQ_CLS) is
    called as it is."""

    def __init__(self, model) -> None:
        get = getattr(model, "get_output_embeddings", None)
        self.head = get() if callable(get) else None
        self.index: torch.Tensor | None = None
        self.length = 0
        self.used = False
        if self.head is not None:
            self.head.register_forward_pre_hook(self._select, with_kwargs=True)

    def _select(self, module, args, kwargs):
        if self.index is None or not args or not torch.is_tensor(args[0]) or args[0].dim() != 3:
            return None
        h = args[0]
        if h.shape[1] < self.length:
            return None
        h = h[:, h.shape[1] - self.length :].reshape(-1, h.shape[-1]).index_select(0, self.index)
        self.used = True
        return (h.unsqueeze(1), *args[1:]), kwargs

    def loss(
        self, model, batch: dict[str, torch.Tensor], reduction: str = "mean", observe: Callable | None = None
    ) -> tuple[torch.Tensor, int]:
        """The batch's loss (token mean, or sum) and the number of loss tokens: CAUSAL_LM through the labelled
        positions only (``data.loss_positions``), SEQ_CLS (1-D labels) by the model's own loss (mean per row).
        ``observe(logits, targets, index, length)`` (CAUSAL_LM) sees the labelled positions' logits ``[N, vocab]``,
        their labels, their flat positions in ``[B, length]`` and ``length``."""
        labels = batch["labels"]
        if labels.dim() == 1 or self.head is None:
            out = model(**batch)
            n = labels.numel() if labels.dim() == 1 else int((labels[:, 1:] != -100).sum())
            return (out.loss if reduction == "mean" else out.loss * n), n
        index, targets = pdata.loss_positions(labels)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        bounds = None
        if "position_ids" in inputs and "attention_mask" not in inputs:
            inputs["use_cache"] = False  # packed: transformers masks per row only without a cache
            if labels.shape[0] == 1:
                starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
                bounds = [*starts, labels.shape[1]] if starts and starts[0] == 0 else None
        self.index, self.length, self.used = index, labels.shape[1], False
        _packed.bounds = bounds
        try:
            out = model(**inputs)
        finally:
            self.index = None
            _packed.bounds = None
        logits = out.logits
        if self.used:
            logits = logits.reshape(-1, logits.shape[-1])
        else:  # the output layer was not called as expected: the full logits, selected here
            logits = logits[:, -labels.shape[1] :].reshape(-1, logits.shape[-1]).index_select(0, index)
        if observe is not None:
            observe(logits, targets, index, labels.shape[1])
        loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction=reduction)
        return loss, int(targets.numel())


def labelled_logits(model) -> _LabelledLogits:
    """The model's ``_LabelledLogits`` (made once; its hook stays on the output layer and acts only during
    ``loss``)."""
    found = getattr(model, "_peftlab_labelled", None)
    if found is None:
        found = _LabelledLogits(model)
        object.__setattr__(model, "_peftlab_labelled", found)
    return found


def packing_isolates(model, vocab: int) -> float:
    """How far (max |Δ logit|, relative to the largest logit) two short rows' logits packed into one sequence
    differ from each row alone: about 0 when the model keeps attention inside each packed row."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, max(4, vocab), (n,), generator=g).tolist() for n in (7, 5)]
    try:
        with torch.no_grad():
            alone = [model(input_ids=torch.tensor([r], device=device), use_cache=False).logits[0] for r in rows]
            packed = pdata.pack([{"input_ids": r, "labels": r} for r in rows])
            out = model(
                input_ids=packed["input_ids"].to(device),
                position_ids=packed["position_ids"].to(device),
                use_cache=False,
            ).logits[0]
    finally:
        model.train(was_training)
    ref = torch.cat(alone).float()
    return float((out.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-6))


@torch.no_grad()
def eval_loss(
    model, items: list[dict], pad_id: int, batch_size: int = 8, accelerator=None, observe: Callable | None = None
) -> float:
    """Token-weighted mean loss over ``items`` (classification: mean cross-entropy). With an ``accelerator`` of
    several processes, each evaluates every N-th batch and the sums are added up across them; every process runs
    the same number of forward passes (one without a batch of its own repeats the first, unweighted), so a sharded
    model's collective forward (FSDP) stays in step. ``observe(rows, logits, targets, index, length)`` (CAUSAL_LM)
    sees each batch's labelled logits as ``_LabelledLogits.loss`` gives them, ``rows`` being the batch's indices
    into ``items``."""
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    labelled = labelled_logits(accelerator.unwrap_model(model) if accelerator is not None else model)
    order = sorted(range(len(items)), key=lambda j: len(items[j]["input_ids"]))  # similar lengths: less padding
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    starts = list(range(0, len(items), batch_size))
    rounds = -(-len(starts) // world) if world > 1 else len(starts)
    for r in range(rounds):
        b = r * world + rank
        own = b < len(starts)
        i = starts[b] if own else 0
        rows = order[i : i + batch_size]
        batch = {k: v.to(device) for k, v in pdata.collate([items[j] for j in rows], pad_id).items()}
        seen = None if observe is None or not own else functools.partial(observe, rows)
        loss, n = labelled.loss(model, batch, reduction="sum", observe=seen)
        if not own:
            continue
        total += float(loss)
        count += n
    if world > 1:
        sums = accelerator.reduce(torch.tensor([total, float(count)], dtype=torch.float64, device=device), "sum")
        total, count = float(sums[0]), int(sums[1])
    model.train(was_training)
    return total / max(count, 1)

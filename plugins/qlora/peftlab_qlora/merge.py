"""Merging LoRA into a 4-bit weight: W₄ ← quantize(dequantize(W₄) + ΔW).

Requantizing rounds W + ΔW to the 4-bit grid again, so the merged layer only approximates the adapter
(README: measured error). ``unmerge`` puts the exact original 4-bit weight back when it undoes the most
recent merge of the layer, and otherwise subtracts ΔW the same lossy way.
"""

from __future__ import annotations

import torch

from peftlab_lora import LoraLayer

from .base import require_bitsandbytes

STASH = "_peftlab_qlora_merged"  # layer attribute: [(adapter name, original 4-bit weight)] in merge order


def is_4bit(module: torch.nn.Module) -> bool:
    return hasattr(getattr(module, "weight", None), "quant_state")


def dequantized(weight: torch.nn.Parameter) -> torch.Tensor:
    """The float weight a bitsandbytes ``Params4bit`` stands for."""
    bnb = require_bitsandbytes(str(weight.device))
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)


def requantized(weight: torch.nn.Parameter, W: torch.Tensor, module: torch.nn.Module) -> torch.nn.Parameter:
    """A new ``Params4bit`` holding ``W`` quantized with ``weight``'s settings (data type, blocks, double quant)."""
    bnb = require_bitsandbytes(str(weight.device))
    new = bnb.nn.Params4bit(
        W.to("cpu"),
        requires_grad=False,
        blocksize=weight.blocksize,
        compress_statistics=weight.compress_statistics,
        quant_type=weight.quant_type,
        quant_storage=weight.quant_storage,
        module=module,
    )
    return new.to(weight.device)  # moving an unquantized Params4bit to a device quantizes it


@torch.no_grad()
def merge_4bit(layer: LoraLayer, name: str) -> None:
    base = layer.base_layer
    W = dequantized(base.weight)
    delta = layer.merged_delta(name).to(W.dtype)  # ΔW times the adapter's weight (set_weight)
    layer.__dict__.setdefault(STASH, []).append((name, base.weight))
    base.weight = requantized(base.weight, W + delta, base)


@torch.no_grad()
def unmerge_4bit(layer: LoraLayer, name: str) -> None:
    base = layer.base_layer
    stash = layer.__dict__.get(STASH, [])
    if stash and stash[-1][0] == name:  # undoing the latest merge: the original weight is exact
        base.weight = stash.pop()[1]
        base.quant_state = base.weight.quant_state
        return
    W = dequantized(base.weight)
    layer.__dict__[STASH] = []  # the stashed originals all include this adapter's ΔW: none is exact any more
    base.weight = requantized(base.weight, W - layer.merged_delta(name).to(W.dtype), base)

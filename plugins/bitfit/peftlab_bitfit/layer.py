"""BitFit's bias deltas, after Ben Zaken et al. (2021): ``y = W x + b + Δb``, only Δb trains.

The trained part is a delta ``Δb`` (zero at the start) per adapter name, held in a
``ParameterDict`` named ``bitfit_bias`` on the layer and added to its output by a forward hook.
Keeping the base bias ``b`` untouched lets the adapter be switched off, stacked, and chosen per
row of a batch; ``merge`` folds ``Δb`` into ``b`` (creating ``b`` on a layer that had none).
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab.kit import for_rows, keep, placement, rows, share_state

from .select import bias_size, owner

ATTR = "bitfit_bias"  # the ParameterDict on each adapted layer: layer.bitfit_bias[adapter_name] = Δb
WEIGHTS = "_bitfit_weights"  # plain attribute: {adapter name: weight} from the scale hook (absent: 1)


def add_bias_deltas(layer: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
    """Forward hook: ``y = W x + b + Δb`` for each active adapter (a bias acts on the last dimension)."""
    for name, delta_b in layer.bitfit_bias.items():
        acting = rows(layer, name, y.device)  # None: off (or merged); True: all rows; bool[batch]: some rows
        if acting is None:
            continue
        y = y + for_rows(weighted(layer, name, delta_b).to(y.dtype).expand_as(y), acting)
    return y


def weighted(layer: nn.Module, name: str, delta_b: torch.Tensor) -> torch.Tensor:
    """``Δb`` times adapter ``name``'s weight (``scale``; 1 when never set). A tensor weight keeps its graph."""
    w = layer.__dict__.get(WEIGHTS, {}).get(name, 1.0)
    if isinstance(w, torch.Tensor):
        return delta_b * w.to(device=delta_b.device, dtype=delta_b.dtype)
    return delta_b if w == 1.0 else delta_b * w


def set_weight(layer: nn.Module, name: str, weight: float | torch.Tensor) -> None:
    layer.__dict__.setdefault(WEIGHTS, {})[name] = weight


def bias_layers(model: nn.Module, name: str | None = None) -> dict[str, nn.Module]:
    """``{path: layer}`` of layers holding a BitFit delta for adapter ``name`` (any adapter if None)."""
    return {
        path: m
        for path, m in model.named_modules()
        if isinstance(getattr(m, ATTR, None), nn.ParameterDict) and (name is None or name in getattr(m, ATTR))
    }


def inject_bias_deltas(model: nn.Module, name: str, paths: list[str]) -> None:
    """Give each layer in ``paths`` a zero ``Δb`` for adapter ``name`` (and the hook, once)."""
    for path in paths:
        layer = model.get_submodule(path)
        if not isinstance(getattr(layer, ATTR, None), nn.ParameterDict):
            layer.add_module(ATTR, nn.ParameterDict())
            share_state(layer, model)  # the routing state, as a plain attribute
            keep(layer, "_bitfit_base_has_bias", getattr(owner(layer), "bias", None) is not None)
            keep(layer, "_bitfit_merged", set())  # adapter names whose Δb is folded into the bias
            layer.register_forward_hook(add_bias_deltas)
        weight = getattr(owner(layer), "weight", None)
        device, dtype = placement(layer if weight is None else weight)  # 4-bit bases: float32 deltas
        getattr(layer, ATTR)[name] = nn.Parameter(torch.zeros(bias_size(layer), device=device, dtype=dtype))


def base_bias(layer: nn.Module) -> torch.Tensor:
    """The base model's own bias ``b`` in float32 (zeros where it had none), without merged deltas."""
    delta = getattr(layer, ATTR)
    if not layer.__dict__["_bitfit_base_has_bias"]:
        return torch.zeros(bias_size(layer), device=next(iter(delta.values())).device)
    b = owner(layer).bias.detach().float().clone()
    for name in layer.__dict__["_bitfit_merged"]:
        b -= weighted(layer, name, delta[name].detach()).float()  # merge folded the weighted Δb
    return b


def merge(layer: nn.Module, name: str) -> None:
    """Fold Δb into b; a layer without a bias gets one (so the merged model runs without hooks' help)."""
    base, delta_b = owner(layer), getattr(layer, ATTR)[name]
    with torch.no_grad():
        if base.bias is None:
            w = getattr(base, "weight", None)
            dtype = w.dtype if w is not None and w.dtype.is_floating_point else delta_b.dtype
            base.bias = nn.Parameter(weighted(layer, name, delta_b.detach()).clone().to(dtype), requires_grad=False)
        else:
            base.bias.add_(weighted(layer, name, delta_b).to(base.bias.dtype))
    layer.__dict__["_bitfit_merged"].add(name)


def unmerge(layer: nn.Module, name: str) -> None:
    """Take Δb out of b again; a bias that merging created goes away with the last merged delta."""
    base, delta_b = owner(layer), getattr(layer, ATTR)[name]
    merged = layer.__dict__["_bitfit_merged"]
    merged.discard(name)
    with torch.no_grad():
        if not layer.__dict__["_bitfit_base_has_bias"] and not merged:
            base.bias = None  # restores the bias-less layer exactly
        else:
            base.bias.sub_(weighted(layer, name, delta_b).to(base.bias.dtype))

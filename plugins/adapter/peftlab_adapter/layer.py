"""The bottleneck adapter, after Houlsby et al. (2019): ``h ← h + f(h W_down) W_up``.

Each adapted sublayer (an attention or feed-forward block) gets a ``ModuleDict`` named
``bottleneck`` holding one ``Bottleneck`` per adapter name, and one forward hook that adds the
active adapters to the sublayer's output. Hooks leave the base model's module paths (and so its
parameter names) untouched; the hook is a plain function, so deep copies stay self-contained.
"""

from __future__ import annotations

import torch
from torch import nn

from peftlab import MethodError
from peftlab.kit import for_rows, placement, rows, share_state

ATTR = "bottleneck"  # the ModuleDict on each adapted sublayer: sublayer.bottleneck[adapter_name]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class Bottleneck(nn.Module):
    """f(h W_down) W_up: down-project to m, non-linearity, up-project back to the hidden size d."""

    def __init__(self, d: int, m: int, activation: str, *, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.adapter_down = nn.Linear(d, m, device=device, dtype=dtype)  # W_down: d → m (with bias)
        self.f = ACTIVATIONS[activation]()
        self.adapter_up = nn.Linear(m, d, device=device, dtype=dtype)  # W_up: m → d (with bias)

    def reset(self, init_scale: float, zero_init_up: bool) -> None:
        """Near-identity start (Houlsby §3.6): small truncated-normal weights, zero biases."""
        with torch.no_grad():
            for proj in (self.adapter_down, self.adapter_up):
                nn.init.trunc_normal_(proj.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
                nn.init.zeros_(proj.bias)
            if zero_init_up:
                nn.init.zeros_(self.adapter_up.weight)  # exactly the base model at step 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.adapter_up(self.f(self.adapter_down(h)))  # the residual "h +" is added by the hook

    def weighted(self, update: torch.Tensor) -> torch.Tensor:
        """``update`` times the weight the ``scale`` hook set (1: as trained); a tensor weight keeps its graph."""
        w = self.__dict__.get("scale_weight", 1.0)  # a plain attribute (kit.keep): never a registered parameter
        if isinstance(w, torch.Tensor):
            return update * w.to(device=update.device, dtype=update.dtype)
        return update if w == 1.0 else update * w


def add_bottlenecks(sublayer: nn.Module, args: tuple, output):
    """Forward hook: ``h ← h + f(h W_down) W_up`` for each active adapter, on this sublayer's output."""
    h = output[0] if isinstance(output, tuple) else output  # attention blocks return (h, attn_weights)
    for name, adapter in sublayer.bottleneck.items():
        acting = rows(sublayer, name, h.device)  # None: off; True: all rows; bool[batch]: some rows
        if acting is None:
            continue
        if h.shape[-1] != adapter.adapter_down.in_features:
            raise MethodError(
                f"bottleneck adapter: the output of {type(sublayer).__name__} has size {h.shape[-1]}, "
                f"not the hidden size {adapter.adapter_down.in_features}; point attn_module / "
                f"ffn_module at a sublayer whose output joins the residual stream"
            )
        update = adapter.weighted(adapter(h.to(adapter.adapter_down.weight.dtype)))
        h = h + for_rows(update, acting).to(h.dtype)
    return (h, *output[1:]) if isinstance(output, tuple) else h


def bottlenecks(model: nn.Module, name: str | None = None) -> dict[str, nn.ModuleDict]:
    """``{sublayer path: its bottleneck ModuleDict}`` of sublayers holding adapter ``name`` (any if None)."""
    return {
        path: getattr(m, ATTR)
        for path, m in model.named_modules()
        if isinstance(getattr(m, ATTR, None), nn.ModuleDict) and (name is None or name in getattr(m, ATTR))
    }


def inject_bottlenecks(
    model: nn.Module,
    name: str,
    paths: list[str],
    d: int,
    m: int,
    activation: str,
    init_scale: float,
    zero_init_up: bool,
) -> None:
    """Give each sublayer in ``paths`` a ``Bottleneck`` for adapter ``name`` (and the hook, once)."""
    for path in paths:
        sublayer = model.get_submodule(path)
        if not isinstance(getattr(sublayer, ATTR, None), nn.ModuleDict):
            if hasattr(sublayer, ATTR):
                raise MethodError(f"{path} already has an attribute {ATTR!r}; cannot add a bottleneck adapter")
            sublayer.add_module(ATTR, nn.ModuleDict())
            share_state(sublayer, model)  # the routing state, as a plain attribute
            sublayer.register_forward_hook(add_bottlenecks)
        device, dtype = placement(sublayer)  # 4-bit bases: float32 adapters
        adapter = Bottleneck(d, m, activation, device=device, dtype=dtype)
        adapter.reset(init_scale, zero_init_up)
        getattr(sublayer, ATTR)[name] = adapter

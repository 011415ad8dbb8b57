"""The LoRA layer, after the paper: ``h = W x + B A x · α/r`` (nanoGPT-style: read forward first)."""

from __future__ import annotations

import math

import torch
from torch import nn

from peftlab import adapter_state
from peftlab.kit import for_rows, is_conv1d, keep, match_targets, placement, replace_module

# the attention projections LoRA adapts by default, per model family (as in the LoRA paper: W_q, W_v)
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "opt": ["q_proj", "v_proj"],
    "falcon": ["query_key_value"],
}


def in_out_features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear-like module, or None when LoRA cannot wrap it."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]  # Conv1D stores (in, out)
    if isinstance(module, nn.Linear) or (hasattr(module, "in_features") and hasattr(module, "out_features")):
        return int(module.in_features), int(module.out_features)
    return None


class LoraLayer(nn.Module):
    """Wraps a linear-like ``base_layer``; holds one (A, B) pair per adapter name."""

    def __init__(self, base_layer: nn.Module, state) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = in_out_features(base_layer)
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.weights: dict[str, float | torch.Tensor] = {}  # set_weight's weight per adapter (absent: 1, as trained)
        keep(self, "state", state)  # shared routing state; a plain attribute, not a submodule

    # PyTorch code that reaches for the wrapped layer's weight/bias keeps working
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def add(self, name: str, r: int, alpha: float, dropout: float, rslora: bool, init: bool | str) -> None:
        device, dtype = placement(self.base_layer.weight)  # 4-bit bases train float32 adapters
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / math.sqrt(r) if rslora else alpha / r
        with torch.no_grad():
            if init is True:
                nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B[name].weight)
            elif init == "gaussian":
                nn.init.normal_(self.lora_A[name].weight, std=1 / r)
                nn.init.zeros_(self.lora_B[name].weight)
            # init False: both keep nn.Linear's random init, so the adapter acts from the start

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW = B A · scaling, shaped like the base weight."""
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def weighted(self, name: str, update: torch.Tensor) -> torch.Tensor:
        """``update`` times adapter ``name``'s weight (a tensor weight keeps its graph, so gradients reach it)."""
        w = self.weights.get(name, 1.0)
        if isinstance(w, torch.Tensor):
            return update * w.to(device=update.device, dtype=update.dtype)
        return update if w == 1.0 else update * w

    def merged_delta(self, name: str) -> torch.Tensor:
        """What ``merge`` folds into the base weight: ΔW times the adapter's weight."""
        return self.weighted(name, self.delta_weight(name))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        for name in self.lora_A:
            rows = self.state.select(name, x.device)  # None: off; True: all rows; bool[batch]: some rows
            if rows is None:
                continue
            update = self.update(name, x)
            if update is None:
                continue
            h = h + for_rows(self.weighted(name, update), rows).to(h.dtype)
        return h

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """ΔW x for adapter ``name``: B A x · scaling (``None`` when it adds nothing). Subclasses (AdaLoRA) override
        this; ``forward`` does the routing for all of them."""
        A, B, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        return B(A(dropout(x.to(A.weight.dtype)))) * self.scaling[name]

    def merge(self, name: str) -> None:
        with torch.no_grad():
            w = self.base_layer.weight
            w.add_(self.merged_delta(name).to(w.dtype))

    def unmerge(self, name: str) -> None:
        with torch.no_grad():
            w = self.base_layer.weight
            w.sub_(self.merged_delta(name).to(w.dtype))


def lora_layers(model: nn.Module, name: str | None = None) -> dict[str, LoraLayer]:
    """``{module path: LoraLayer}`` of the layers holding adapter ``name`` (any adapter if None)."""
    return {
        path: m for path, m in model.named_modules() if isinstance(m, LoraLayer) and (name is None or name in m.lora_A)
    }


def resolve_targets(model: nn.Module, config) -> None:
    """Record the default targets in ``config.target_modules`` (by name) so the saved config says what was adapted."""
    if config.target_modules is None:
        config.target_modules = sorted({p.rsplit(".", 1)[-1] for p in lora_targets(model, None)})


def lora_targets(model: nn.Module, targets: list[str] | str | None) -> list[str]:
    """Module paths ``targets`` selects (peft's rules; ``None``: the family's default, else all-linear)."""
    default = DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), "all-linear")
    return match_targets(
        model, targets, default=default, accepts=lambda m: in_out_features(m) is not None, method="LoRA"
    )


def inject_lora(
    model: nn.Module,
    name: str,
    r: int,
    alpha: float,
    dropout: float,
    rslora: bool,
    init: bool | str,
    targets: list[str] | str | None,
) -> list[str]:
    """Wrap every targeted layer in a ``LoraLayer`` (or extend an existing one); return the paths."""
    state = adapter_state(model)
    paths = lora_targets(model, targets)
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, LoraLayer):
            module = LoraLayer(module, state)
            replace_module(model, path, module)
        module.add(name, r, alpha, dropout, rslora, init)
    return paths

"""peftlab-scale: a learned per-channel output scale, h = W x ⊙ (1 + s) (core/docs/writing-a-plugin.md builds it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peftlab import Capabilities, ConfigError, Method, MethodConfig, hookimpl, option
from peftlab.kit import for_rows, match_targets, placement, replace_module, rows, share_state


@dataclass
class ScaleConfig(MethodConfig):
    target_modules: list[str] = option(["v_proj"], help="Linear layers whose outputs get a learned scale")

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one layer")


class ScaledLinear(nn.Module):
    """Wraps a linear layer: h = W x ⊙ (1 + s), with one scale s per adapter name, starting at zero."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale = nn.ParameterDict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        for name, s in self.scale.items():
            acting = rows(self, name, x.device)  # None: off · True: every row · bool[batch]: some rows
            if acting is None:
                continue
            h = h * (1 + for_rows(s.expand_as(h), acting))
        return h


def scales(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """``{path of a ScaledLinear: its s}`` for one adapter."""
    return {
        path: m.scale[adapter_name]
        for path, m in model.named_modules()
        if isinstance(m, ScaledLinear) and adapter_name in m.scale
    }


class Scale(Method):
    name = "scale"
    config_class = ScaleConfig
    peft_type = "PEFTLAB_SCALE"
    description = "Learned per-channel output scale (a third-party example)"
    capabilities = Capabilities(mergeable=True, mixed_batch=True)
    train_defaults = {"learning_rate": 1e-2}

    @hookimpl
    def inject(self, model, config: ScaleConfig, adapter_name: str) -> None:
        paths = match_targets(
            model,
            config.target_modules,
            accepts=lambda m: isinstance(m, (nn.Linear, ScaledLinear)),
            method="scale",
            supports="it scales the outputs of nn.Linear layers",
        )
        for path in paths:
            layer = model.get_submodule(path)
            if not isinstance(layer, ScaledLinear):  # a second adapter joins the wrapper the first one made
                layer = ScaledLinear(layer)
                share_state(layer, model)  # the routing state `rows` reads, kept off the module tree
                replace_module(model, path, layer)
            device, dtype = placement(layer.base_layer)
            s = torch.zeros(layer.base_layer.out_features, device=device, dtype=dtype)
            layer.scale[adapter_name] = nn.Parameter(s)

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, nn.Parameter]:
        # names as model.named_parameters() gives them
        return {f"{path}.scale.{adapter_name}": s for path, s in scales(model, adapter_name).items()}

    def tensor_map(self, model, config, adapter_name: str) -> dict[str, torch.Tensor]:
        # PEFT keys: "base_model.model.<path>.scale", no adapter name (save and load come from this)
        return {self.peft_key(path, "scale"): s for path, s in scales(model, adapter_name).items()}

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        with torch.no_grad():
            for path, s in scales(model, adapter_name).items():
                base = model.get_submodule(path).base_layer
                base.weight.mul_((1 + s).unsqueeze(1))  # diag(1 + s) W
                if base.bias is not None:
                    base.bias.mul_(1 + s)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        with torch.no_grad():
            for path, s in scales(model, adapter_name).items():
                base = model.get_submodule(path).base_layer
                base.weight.div_((1 + s).unsqueeze(1))
                if base.bias is not None:
                    base.bias.div_(1 + s)


@hookimpl
def register_methods(register):
    register(Scale())

"""A third-party peftlab method, written as docs/writing-a-plugin.md explains.

"scale" learns one factor per output channel of the chosen linear layers: h = W x ⊙ (1 + s),
with s starting at zero (so training starts from the base model). Mergeable: diag(1 + s) W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import peftlab
from peftlab import Capabilities, ConfigError, Method, MethodConfig, MethodError, hookimpl, option


@dataclass
class ScaleConfig(MethodConfig):
    target_modules: list[str] = option(["v_proj"], help="Linear layers whose outputs get a learned scale")

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one layer")


def _scales(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    return {path: m.scale[name] for path, m in model.named_modules() if isinstance(m, ScaledLinear) and name in m.scale}


class ScaledLinear(nn.Module):
    def __init__(self, base: nn.Linear, state) -> None:
        super().__init__()
        self.base_layer = base
        self.scale = nn.ParameterDict()
        self.__dict__["state"] = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        for name, s in self.scale.items():
            rows = self.state.select(name, x.device)
            if rows is None:
                continue
            gain = 1 + s if rows is True else 1 + s * rows.view(-1, *([1] * (h.dim() - 1)))
            h = h * gain
        return h


class Scale(Method):
    name = "scale"
    config_class = ScaleConfig
    peft_type = "PEFTLAB_SCALE"
    description = "Learned per-channel output scale (a third-party example)"
    capabilities = Capabilities(mergeable=True, mixed_batch=True)
    train_defaults = {"learning_rate": 1e-2}

    @hookimpl
    def inject(self, model, config: ScaleConfig, adapter_name: str) -> None:
        state = peftlab.adapter_state(model)
        paths = [p for p, m in model.named_modules()
                 if isinstance(m, (nn.Linear, ScaledLinear)) and p.rsplit(".", 1)[-1] in config.target_modules]
        if not paths:
            raise MethodError(f"scale: target_modules={config.target_modules} matched no Linear layer")
        for path in paths:
            module = model.get_submodule(path)
            if not isinstance(module, ScaledLinear):
                parent, _, child = path.rpartition(".")
                module = ScaledLinear(module, state)
                setattr(model.get_submodule(parent), child, module)
            w = module.base_layer.weight
            module.scale[adapter_name] = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, nn.Parameter]:
        return {f"{p}.scale.{adapter_name}": s for p, s in _scales(model, adapter_name).items()}

    def tensor_map(self, model, config, adapter_name: str) -> dict[str, torch.Tensor]:
        return {f"base_model.model.{p}.scale": s for p, s in _scales(model, adapter_name).items()}

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        with torch.no_grad():
            for path, s in _scales(model, adapter_name).items():
                base = model.get_submodule(path).base_layer
                base.weight.mul_((1 + s).unsqueeze(1))
                if base.bias is not None:
                    base.bias.mul_(1 + s)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        with torch.no_grad():
            for path, s in _scales(model, adapter_name).items():
                base = model.get_submodule(path).base_layer
                base.weight.div_((1 + s).unsqueeze(1))
                if base.bias is not None:
                    base.bias.div_(1 + s)


@hookimpl
def register_methods(register):
    register(Scale())

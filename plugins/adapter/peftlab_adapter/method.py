"""The bottleneck adapter's registration: the hooks core calls for adapters of method ``adapter``."""

from __future__ import annotations

import torch

from peftlab import Capabilities, Method, MethodError, hookimpl
from peftlab.kit import keep

from .config import BottleneckAdapterConfig
from .layer import bottlenecks, inject_bottlenecks
from .sublayers import hidden_size, sublayer_paths


def bottleneck_width(config: BottleneckAdapterConfig, d: int) -> int:
    """m: ``bottleneck_size`` if set, else ``hidden_size // reduction_factor``; never wider than d."""
    m = config.bottleneck_size if config.bottleneck_size is not None else int(d // config.reduction_factor)
    if m > d:
        raise MethodError(
            f"bottleneck_size={m} is larger than the model's hidden size {d}; a bottleneck adapter "
            f"projects down, so pick a size ≤ {d} (e.g. {max(d // 16, 1)})"
        )
    if m < 1:
        raise MethodError(
            f"reduction_factor={config.reduction_factor} leaves no bottleneck for hidden size {d} "
            f"(hidden_size // reduction_factor = 0); use a factor ≤ {d}"
        )
    return m


class BottleneckAdapter(Method):
    name = "adapter"
    config_class = BottleneckAdapterConfig
    peft_type = "BOTTLENECK_ADAPTER"
    description = "Bottleneck adapters (Houlsby/Pfeiffer): h ← h + f(h W_down) W_up after each sublayer"
    capabilities = Capabilities(
        mergeable=False,
        stackable=True,
        mixed_batch=True,
        scalable=True,
        merge_note="the non-linearity f sits between W_down and W_up, so the adapter cannot fold into a weight",
        combine_note="a bottleneck adapter is non-linear (f between W_down and W_up), so a weighted merge of two "
        "is not the weighted sum of what they do; stack them instead (one after the other)",
    )
    train_defaults = {"learning_rate": 1e-3}

    @hookimpl
    def inject(self, model, config: BottleneckAdapterConfig, adapter_name: str) -> None:
        d = hidden_size(model)
        m = bottleneck_width(config, d)
        paths = sublayer_paths(model, config.variant, config.layers, config.attn_module, config.ffn_module)
        inject_bottlenecks(model, adapter_name, paths, d, m, config.activation, config.init_scale, config.zero_init_up)

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        return {
            f"{path}.bottleneck.{adapter_name}.{n}": p
            for path, adapters in bottlenecks(model, adapter_name).items()
            for n, p in adapters[adapter_name].named_parameters()
        }

    @hookimpl
    def scale(self, model, adapter_name: str, weight) -> None:
        """``h ← h + weight · f(h W_down) W_up`` after every adapted sublayer (the residual update is weighted)."""
        for adapters in bottlenecks(model, adapter_name).values():
            keep(adapters[adapter_name], "scale_weight", weight)

    def tensor_map(self, model, config, adapter_name: str) -> dict[str, torch.Tensor]:
        # base_model.model.<sublayer>.adapter_down.weight etc.; a LoRA wrapper's base_layer is not part of the key
        return {
            self.peft_key(path, n): p
            for path, adapters in bottlenecks(model, adapter_name).items()
            for n, p in adapters[adapter_name].named_parameters()
        }

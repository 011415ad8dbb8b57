"""The bottleneck adapter's config: the schema for the CLI, the UI form and ``adapter_config.json``.

``peft`` has no Houlsby adapter, so the keys are peftlab's own (``peft_type: BOTTLENECK_ADAPTER``),
named after the papers and after adapter-transformers where it has a name for the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, MethodConfig, option

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
VARIANTS = ("houlsby", "pfeiffer")


@dataclass
class BottleneckAdapterConfig(MethodConfig):
    variant: Literal["houlsby", "pfeiffer"] = option(
        "houlsby",
        help="houlsby: an adapter after the attention and after the feed-forward sublayer of each "
        "layer (Houlsby et al. 2019); pfeiffer: after the feed-forward sublayer only",
    )
    reduction_factor: float = option(
        16.0,
        help="Bottleneck size m = hidden_size / reduction_factor (rounded down); ignored when bottleneck_size is set",
    )
    bottleneck_size: int | None = option(
        None, help="Bottleneck size m (the width of h W_down); overrides reduction_factor"
    )
    activation: Literal["relu", "gelu", "silu", "tanh"] = option(
        "relu", help="Non-linearity f between the down- and the up-projection"
    )
    layers: list[int] | None = option(
        None, help="Indices of the transformer layers that get adapters (0-based); empty = every layer"
    )
    init_scale: float = option(
        1e-2,
        help="Std of the truncated normal (cut at ±2σ) that initialises W_down (and W_up unless "
        "zero_init_up); biases start at 0. Small = near-identity (Houlsby §3.6)",
    )
    zero_init_up: bool = option(
        True,
        help="Start W_up at zero so the adapted model starts exactly as the base model; false = "
        "Houlsby's near-identity init of both projections",
    )
    attn_module: str | None = option(
        None,
        help="Path of the attention sublayer inside one transformer layer, whose output the adapter "
        "follows (e.g. self_attn). Empty = known from the model type",
    )
    ffn_module: str | None = option(
        None,
        help="Path of the feed-forward sublayer inside one transformer layer (e.g. mlp). "
        "Empty = known from the model type",
    )

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if isinstance(self.reduction_factor, bool) or not isinstance(self.reduction_factor, int | float):
            raise ConfigError(f"reduction_factor must be a number, got {self.reduction_factor!r}")
        if self.reduction_factor < 1:  # m = hidden / factor would exceed the hidden size
            raise ConfigError(
                f"reduction_factor must be ≥ 1 (the bottleneck is hidden_size / reduction_factor "
                f"and may not be wider than the hidden size), got {self.reduction_factor!r}"
            )
        if self.bottleneck_size is not None and (
            isinstance(self.bottleneck_size, bool)
            or not isinstance(self.bottleneck_size, int)
            or self.bottleneck_size < 1
        ):
            raise ConfigError(f"bottleneck_size must be a positive integer, got {self.bottleneck_size!r}")
        if isinstance(self.layers, tuple | set):
            self.layers = sorted(self.layers)
        if isinstance(self.layers, int) and not isinstance(self.layers, bool):
            self.layers = [self.layers]
        if isinstance(self.layers, list):
            # the CLI and UI hand list items over as text
            self.layers = [int(i) if isinstance(i, str) and i.strip().isdigit() else i for i in self.layers]
            bad = [i for i in self.layers if isinstance(i, bool) or not isinstance(i, int) or i < 0]
            if bad:
                raise ConfigError(f"layers must be non-negative layer indices, got {bad[0]!r}")
            self.layers = sorted(set(self.layers)) or None
        elif self.layers is not None:
            raise ConfigError(f"layers must be a list of layer indices or empty, got {self.layers!r}")
        if not self.init_scale >= 0:
            raise ConfigError(f"init_scale must be ≥ 0, got {self.init_scale!r}")
        for key in ("attn_module", "ffn_module"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip(". ")):
                raise ConfigError(f"{key} must be a module path inside a layer (e.g. 'mlp'), got {value!r}")
        if self.attn_module is not None and self.attn_module == self.ffn_module:
            raise ConfigError(f"attn_module and ffn_module both name {self.attn_module!r}; they must be two sublayers")

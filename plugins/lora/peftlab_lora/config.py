"""LoRA's config: the schema for the CLI, the UI form and ``adapter_config.json`` (PEFT's key names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from peftlab import ConfigError, MethodConfig, option


@dataclass
class LoraConfig(MethodConfig):
    r: int = option(8, help="Rank of the low-rank update (ΔW = B·A has rank ≤ r)")
    lora_alpha: float = option(16, help="Scaling numerator α: the update is scaled by α/r (α/√r with rsLoRA)")
    lora_dropout: float = option(0.0, help="Dropout probability on the LoRA branch input")
    target_modules: list[str] | str | None = option(
        None,
        help="Modules to adapt: names (a module matches when its path ends with one), a regex "
        "(full match on the path), or 'all-linear'. Empty = the model family's attention projections",
    )
    use_rslora: bool = option(False, help="rsLoRA: scale by α/√r instead of α/r (stable at high rank)")
    init_lora_weights: bool | str = option(
        True,
        help="true: Kaiming-uniform A, zero B; 'gaussian': normal A (std 1/r), zero B; "
        "false: random B as well (the adapter changes outputs from the start)",
    )
    bias: Literal["none", "all", "lora_only"] = option("none", help="Which biases train: none, all, lora_only")
    fan_in_fan_out: bool = option(
        False,
        help="Set for layers storing weights as (in, out), like GPT-2's Conv1D "
        "(detected automatically; kept for PEFT compatibility)",
    )

    # keys peft writes for LoRA that carry no meaning for plain LoRA; those with a value are ignored only at that value
    # (an empty one is unset), any other is refused by name. rank_pattern/alpha_pattern give some modules their own
    # r/α: peftlab's LoRA has one r and one α, so such an adapter would load (and merge) with the wrong scaling
    peft_ignored = {
        "rank_pattern": {},
        "alpha_pattern": {},
        "megatron_core": ...,
        "qalora_group_size": ...,
        "runtime_config": ...,
        "lora_bias": False,
        "use_dora": False,
        "use_qalora": False,
        "layers_pattern": None,
        "layers_to_transform": None,
    }

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"r must be a positive integer, got {self.r!r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ConfigError(f"init_lora_weights must be true, false or 'gaussian', got {self.init_lora_weights!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"bias must be none, all or lora_only, got {self.bias!r}")
        if isinstance(self.target_modules, tuple | set):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.target_modules, list) and not self.target_modules:
            self.target_modules = None
        if isinstance(self.init_lora_weights, str) and self.init_lora_weights.lower() in ("true", "false"):
            self.init_lora_weights = self.init_lora_weights.lower() == "true"

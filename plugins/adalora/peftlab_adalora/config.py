"""AdaLoRA's config: PEFT's ``AdaLoraConfig`` key names and semantics (the schema for CLI, UI and disk)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab import ConfigError, MethodConfig, option


@dataclass
class AdaLoraConfig(MethodConfig):
    init_r: int = option(12, help="Initial rank of every adapted layer (the budget starts at init_r × layers)")
    target_r: int = option(8, help="Target average rank: the budget shrinks to target_r × layers")
    tinit: int = option(0, help="Warm-up steps before the budget starts shrinking")
    tfinal: int = option(0, help="Final steps that fine-tune the last allocation with the budget fixed")
    deltaT: int = option(1, help="Steps between two reallocations while the budget shrinks")
    beta1: float = option(0.85, help="EMA coefficient of the sensitivity |w·∂L/∂w| (smoothing)")
    beta2: float = option(0.85, help="EMA coefficient of the sensitivity's uncertainty")
    orth_reg_weight: float = option(0.5, help="Weight of the orthogonality penalty ‖PᵀP−I‖ + ‖QQᵀ−I‖ on the loss")
    total_step: int | None = option(
        None, help="Total optimizer steps of the schedule. Empty = the trainer's max_steps (recorded at step 1)"
    )
    rank_pattern: dict | None = option(
        None, help="Written by training: which singular triplets each layer keeps. Loading resizes to it"
    )
    lora_alpha: float = option(8, help="Scaling numerator α: the update is scaled by α / init_r")
    lora_dropout: float = option(0.0, help="Dropout probability on the adapter input")
    target_modules: list[str] | str | None = option(
        None,
        help="Modules to adapt: names (a module matches when its path ends with one), a regex "
        "(full match on the path), or 'all-linear'. Empty = the model family's attention projections",
    )
    init_lora_weights: bool = option(
        True, help="true: Λ = 0, P and Q ~ N(0, 0.02²) (starts as the base model); false: all ~ N(0, 1) (tests)"
    )
    fan_in_fan_out: bool = option(
        False,
        help="Set for layers storing weights as (in, out), like GPT-2's Conv1D "
        "(detected automatically; kept for PEFT compatibility)",
    )

    # keys peft's AdaLoraConfig (a LoraConfig) writes that AdaLoRA does not use: peft ignores them too
    peft_ignored = {
        "r": ...,
        "use_rslora": ...,
        "alpha_pattern": ...,
        "megatron_core": ...,
        "qalora_group_size": ...,
        "runtime_config": ...,
        "bias": "none",
        "lora_bias": False,
        "use_dora": False,
        "use_qalora": False,
    }

    def __post_init__(self) -> None:
        for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.init_r < 1:
            raise ConfigError(f"init_r must be at least 1, got {self.init_r}")
        if self.target_r > self.init_r:
            raise ConfigError(
                f"target_r ({self.target_r}) is larger than init_r ({self.init_r}): AdaLoRA only "
                f"prunes ranks, so start with init_r >= target_r"
            )
        if self.deltaT < 1:
            raise ConfigError(f"deltaT must be at least 1, got {self.deltaT}")
        for name in ("beta1", "beta2"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {getattr(self, name)!r}")
        if self.orth_reg_weight < 0:
            raise ConfigError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight!r}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.init_lora_weights, str) and self.init_lora_weights.lower() in ("true", "false"):
            self.init_lora_weights = self.init_lora_weights.lower() == "true"
        if self.init_lora_weights not in (True, False):
            raise ConfigError(f"init_lora_weights must be true or false, got {self.init_lora_weights!r}")
        if isinstance(self.target_modules, tuple | set):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.target_modules, list) and not self.target_modules:
            self.target_modules = None
        if self.total_step is not None:
            check_schedule(self, self.total_step, "total_step")
        self.rank_pattern = _check_rank_pattern(self.rank_pattern)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["total_step"] is None:
            # peft refuses total_step=None; an adapter never trained through the trainer's hooks has had no
            # schedule, so record the shortest valid one (it matters only to training, never to inference)
            out["total_step"] = self.tinit + self.tfinal + 1
        return out


def check_schedule(config: AdaLoraConfig, total_step: Any, source: str) -> int:
    """Validate ``total_step`` against ``tinit``/``tfinal`` (peft's rules); returns it."""
    if not isinstance(total_step, int) or isinstance(total_step, bool) or total_step <= 0:
        raise ConfigError(f"AdaLoRA needs {source} > 0 (the length of its rank schedule), got {total_step!r}")
    if config.tinit >= total_step - config.tfinal:
        raise ConfigError(
            f"AdaLoRA's schedule leaves no budgeting phase: tinit ({config.tinit}) + tfinal ({config.tfinal}) must be "
            f"less than {source} ({total_step}). Decrease tinit/tfinal or train longer"
        )
    return total_step


def _check_rank_pattern(pattern: Any) -> dict[str, list[bool]] | None:
    if pattern is None or pattern == {}:
        return None
    if not isinstance(pattern, dict):
        raise ConfigError(f"rank_pattern must map layer names to lists of booleans, got {type(pattern).__name__}")
    out = {}
    for key, keep in pattern.items():
        if not isinstance(keep, list | tuple) or not all(isinstance(k, bool | int) and k in (0, 1) for k in keep):
            raise ConfigError(f"rank_pattern[{key!r}] must be a list of booleans (one per singular triplet)")
        out[str(key)] = [bool(k) for k in keep]
    return out

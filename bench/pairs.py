"""The method pairs: a peftlab method + config and the ``peft`` config that mirrors it.

Adding a method is one entry: ``Pair(method, config, peft=lambda steps: <peft config>)``.
``peft=None`` benchmarks the peftlab side alone (a method peft does not have).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class Pair:
    method: str  # the peftlab method name
    config: dict[str, Any]  # its config fields
    peft: Callable[[int], Any] | None  # total steps -> peft config (None: peft has no such method)
    quantized_base: bool = False  # peft's base is loaded in 4 bits with the same bitsandbytes settings
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _lora(steps: int):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def _qlora(steps: int):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def _adalora(steps: int):
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        init_r=12,
        target_r=8,
        tinit=0,
        tfinal=0,
        deltaT=1,
        lora_alpha=8,
        lora_dropout=0.0,
        beta1=0.85,
        beta2=0.85,
        orth_reg_weight=0.5,
        total_step=steps,
        target_modules=ATTENTION,
        task_type="CAUSAL_LM",
    )


def _prompt_tuning(steps: int):
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=20, prompt_tuning_init="SAMPLE_VOCAB", task_type="CAUSAL_LM")


def _p_tuning(steps: int):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(
        num_virtual_tokens=20, encoder_reparameterization_type="MLP", encoder_hidden_size=576, task_type="CAUSAL_LM"
    )


def _prefix_tuning(steps: int):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        num_virtual_tokens=20, prefix_projection=True, encoder_hidden_size=576, task_type="CAUSAL_LM"
    )


def _p_tuning_v2(steps: int):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=20, prefix_projection=False, task_type="CAUSAL_LM")


LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": LORA_TARGETS}

PAIRS: dict[str, Pair] = {
    "lora": Pair("lora", LORA, _lora),
    "qlora": Pair(
        "qlora",
        {**LORA, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"},
        _qlora,
        quantized_base=True,
        note="LoRA over a bitsandbytes nf4 base (double quant, float32 compute) on both sides",
    ),
    "adalora": Pair(
        "adalora",
        {
            "init_r": 12,
            "target_r": 8,
            "tinit": 0,
            "tfinal": 0,
            "deltaT": 1,
            "lora_alpha": 8,
            "orth_reg_weight": 0.5,
            "target_modules": ATTENTION,
        },
        _adalora,
        note="total_step = the run's steps; rank reallocation after every optimizer step on both sides",
    ),
    "prompt_tuning": Pair(
        "prompt_tuning", {"num_virtual_tokens": 20, "prompt_tuning_init": "SAMPLE_VOCAB"}, _prompt_tuning
    ),
    "p_tuning": Pair(
        "p_tuning",
        {"num_virtual_tokens": 20, "encoder_reparameterization_type": "MLP", "encoder_hidden_size": 576},
        _p_tuning,
    ),
    "prefix_tuning": Pair("prefix_tuning", {"num_virtual_tokens": 20, "encoder_hidden_size": 576}, _prefix_tuning),
    "p_tuning_v2": Pair("p_tuning_v2", {"num_virtual_tokens": 20}, _p_tuning_v2),
}


def installed_pairs() -> list[str]:
    """Registry entries whose peftlab plugin is installed."""
    import peftlab

    have = {m.name for m in peftlab.methods()}
    return [name for name, pair in PAIRS.items() if pair.method in have]

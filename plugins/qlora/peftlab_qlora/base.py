"""Loading the base model in 4 bits through bitsandbytes (the "Q" of QLoRA)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from peftlab import MethodError

from .config import QLoraConfig

INSTALL = "pip install 'bitsandbytes>=0.49'"  # 0.49: the CPU 4-bit kernels
DEVICES = ("cpu", "cuda", "xpu")  # where bitsandbytes has 4-bit kernels


def require_bitsandbytes(device: str = "cpu") -> ModuleType:
    """The ``bitsandbytes`` module, or a ``MethodError`` saying what to install / which hardware works."""
    kind = torch.device(device).type
    if kind not in DEVICES:
        raise MethodError(
            f"QLoRA's 4-bit base needs bitsandbytes kernels, which do not run on {device!r}; "
            f"use one of {', '.join(DEVICES)} (or method 'lora' on a float base)"
        )
    try:
        bnb = importlib.import_module("bitsandbytes")
    except ImportError as e:
        raise MethodError(f"QLoRA needs bitsandbytes to load the base model in 4 bits: {INSTALL} ({e})") from None
    return bnb


def linear4bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's bitsandbytes ``Linear4bit`` layers (empty for a float model)."""
    return [m for m in model.modules() if type(m).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")]


def keep_trainable_layout(model: torch.nn.Module) -> None:
    """Keep every 4-bit weight in the layout that has autograd (and undo a repacking already done).

    On a CPU with AVX512-BF16, bitsandbytes repacks a ``Linear4bit`` weight for a faster kernel the first
    time it runs in eval mode without grad; that kernel has no backward, so training after any
    generate/eval would get silently wrong gradients through the base layers and learn badly.
    """
    for layer in linear4bit_layers(model):
        layer.support_avx512bf16_for_cpu = False
        state = getattr(layer.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):  # repacked already (a base we did not load)
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            # the inverse is exact for the 4-bit codes; the block scales were rounded to bf16 by the packing
            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                layer.weight.data, state
            )
            layer.quant_state = layer.weight.quant_state


def load_4bit(source: str, config: QLoraConfig, task: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """``source`` loaded with its linear layers quantized to 4 bits (``config``'s data type and compute dtype)."""
    if task != "CAUSAL_LM":  # the hook is not told the label count, and bitsandbytes would quantize a new head
        raise MethodError(f"QLoRA supports CAUSAL_LM base models, not {task}")
    require_bitsandbytes(device)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=config.compute_dtype(dtype),
        bnb_4bit_quant_storage=config.storage_dtype(),
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quant, dtype=dtype, device_map={"": device}
        )
    except ImportError as e:  # transformers checks the bitsandbytes install itself
        raise MethodError(f"QLoRA cannot load a 4-bit base: {e}. {INSTALL}") from None
    except (RuntimeError, NotImplementedError) as e:
        if "bitsandbytes" in str(e).lower() or "cuda" in str(e).lower():
            raise MethodError(f"bitsandbytes cannot quantize on {device!r} here: {e}") from None
        raise
    keep_trainable_layout(model)  # before anything runs the model in eval mode
    return model

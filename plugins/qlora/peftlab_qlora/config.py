"""QLoRA's config: LoRA's fields (PEFT's key names) plus how the base model is quantized to 4 bits.

The ``bnb_4bit_*`` keys are ``transformers.BitsAndBytesConfig``'s names. ``peft`` has no such keys in a
LoRA config; it ignores them with a warning when it loads a QLoRA adapter, and the adapter itself is
plain LoRA (``peft_type: LORA``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from peftlab import ConfigError, option
from peftlab_lora import LoraConfig

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE_DTYPES = {"uint8": torch.uint8, **COMPUTE_DTYPES}


@dataclass
class QLoraConfig(LoraConfig):
    target_modules: list[str] | str | None = option(
        "all-linear",
        help="Modules to adapt: names, a regex (full match on the path), or 'all-linear' (the QLoRA "
        "paper adapts every linear layer to match full fine-tuning). Empty = attention projections",
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = option(
        "nf4", help="4-bit data type of the base weights: nf4 (NormalFloat, the paper's) or fp4"
    )
    bnb_4bit_use_double_quant: bool = option(
        True, help="Double quantization: quantize the per-block scales too (saves ~0.4 bit per weight)"
    )
    bnb_4bit_compute_dtype: str | None = option(
        None,
        help="dtype the 4-bit weights are dequantized to for matmuls. Empty = the model dtype "
        "(float32 on CPU, bfloat16 on a GPU that has it)",
        choices=list(COMPUTE_DTYPES),
    )

    bnb_4bit_quant_storage: str | None = option(
        None,
        help="dtype the packed 4-bit weights are stored in. Empty = uint8 (bitsandbytes' default). Under FSDP set it "
        "to the compute dtype (e.g. bfloat16): FSDP flattens and shards parameters of one dtype together",
        choices=list(STORAGE_DTYPES),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bnb_4bit_quant_storage in ("", "auto"):
            self.bnb_4bit_quant_storage = None
        if self.bnb_4bit_quant_storage is not None and self.bnb_4bit_quant_storage not in STORAGE_DTYPES:
            raise ConfigError(
                f"bnb_4bit_quant_storage must be one of {sorted(STORAGE_DTYPES)} or empty, "
                f"got {self.bnb_4bit_quant_storage!r}"
            )
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"bnb_4bit_quant_type must be nf4 or fp4, got {self.bnb_4bit_quant_type!r}")
        if not isinstance(self.bnb_4bit_use_double_quant, bool):
            raise ConfigError(
                f"bnb_4bit_use_double_quant must be true or false, got {self.bnb_4bit_use_double_quant!r}"
            )
        if self.bnb_4bit_compute_dtype in ("", "auto"):
            self.bnb_4bit_compute_dtype = None
        if self.bnb_4bit_compute_dtype is not None and self.bnb_4bit_compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"bnb_4bit_compute_dtype must be one of {sorted(COMPUTE_DTYPES)} or empty, "
                f"got {self.bnb_4bit_compute_dtype!r}"
            )

    def storage_dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.bnb_4bit_quant_storage or "uint8"]

    def compute_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return COMPUTE_DTYPES[self.bnb_4bit_compute_dtype] if self.bnb_4bit_compute_dtype else model_dtype

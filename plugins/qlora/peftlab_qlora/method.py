"""QLoRA's registration: LoRA's hooks, plus a 4-bit base loader and a merge that requantizes."""

from __future__ import annotations

import torch

from peftlab import Capabilities, hookimpl
from peftlab_lora import LoRA, lora_layers
from peftlab_lora.combine import COMBINATIONS

from .base import keep_trainable_layout, load_4bit, require_bitsandbytes
from .config import QLoraConfig
from .merge import is_4bit, merge_4bit, unmerge_4bit


class QLoRA(LoRA):
    name = "qlora"
    config_class = QLoraConfig
    peft_type = "LORA"  # on disk it is a LoRA adapter: peft loads it onto a 4-bit (or any) base
    description = "QLoRA: LoRA over a base model quantized to 4-bit NormalFloat (bitsandbytes)"
    capabilities = Capabilities(
        mergeable=True,
        stackable=True,
        mixed_batch=True,
        needs_quantized_base=True,
        scalable=True,  # LoRA's scale hook (inherited); a merge into the 4-bit base folds the weighted ΔW
        task_types=("CAUSAL_LM",),
        combinations=COMBINATIONS,  # its adapters are LoRA's: LoRA's combine (inherited) merges them
        merge_note="merging into a 4-bit base requantizes W+ΔW, which rounds part of the update away",
    )

    @hookimpl
    def claims_peft_config(self, data: dict) -> bool:
        return False  # a peft LORA adapter is method 'lora' unless the user names qlora (our sidecar does)

    @hookimpl
    def inject(self, model, config: QLoraConfig, adapter_name: str) -> None:
        keep_trainable_layout(model)  # a 4-bit base loaded elsewhere may still have bitsandbytes' CPU default
        super().inject(model, config, adapter_name)

    @hookimpl
    def load_base_model(
        self, source: str, config: QLoraConfig, task: str, dtype: torch.dtype, device: str
    ) -> torch.nn.Module:
        return load_4bit(source, config, task, dtype, device)

    @hookimpl
    def make_optimizer(
        self, params: list[torch.nn.Parameter], lr: float, weight_decay: float
    ) -> torch.optim.Optimizer | None:
        """Paged AdamW on CUDA (the QLoRA paper's answer to optimizer-state memory spikes); the CPU has no
        paging to gain from, so it keeps the trainer's AdamW."""
        if not any(p.is_cuda for p in params):
            return None
        return require_bitsandbytes("cuda").optim.PagedAdamW(params, lr=lr, weight_decay=weight_decay)

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        for layer in lora_layers(model, adapter_name).values():
            merge_4bit(layer, adapter_name) if is_4bit(layer.base_layer) else layer.merge(adapter_name)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        for layer in lora_layers(model, adapter_name).values():
            unmerge_4bit(layer, adapter_name) if is_4bit(layer.base_layer) else layer.unmerge(adapter_name)

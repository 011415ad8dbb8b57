"""LoRA's registration: the hooks core calls for adapters of method ``lora``."""

from __future__ import annotations

import torch

from peftlab import Capabilities, Method, MethodError, hookimpl
from peftlab.kit import replace_module

from .combine import COMBINATIONS, combine_lora_family, lora_factors
from .config import LoraConfig
from .layer import inject_lora, lora_layers, resolve_targets


class LoRA(Method):
    name = "lora"
    config_class = LoraConfig
    peft_type = "LORA"
    description = "LoRA: low-rank updates B·A added to linear layers"
    capabilities = Capabilities(
        mergeable=True, stackable=True, mixed_batch=True, combinations=COMBINATIONS, scalable=True
    )

    @hookimpl
    def claims_peft_config(self, data: dict) -> bool:
        return not data.get("use_dora")  # DoRA is a different computation

    @hookimpl
    def combine(self, parents: list, weights: list[float], combination: str, options: dict) -> tuple[dict, dict]:
        """Weighted merge of saved LoRA adapters (``combine.py`` has the maths, peft's types and names)."""
        factors = [lora_factors(p, self.module_prefix) for p in parents]
        return combine_lora_family(parents, factors, weights, combination, options, self.module_prefix)

    @hookimpl
    def inject(self, model, config: LoraConfig, adapter_name: str) -> None:
        resolve_targets(model, config)
        inject_lora(
            model,
            adapter_name,
            config.r,
            config.lora_alpha,
            config.lora_dropout,
            config.use_rslora,
            config.init_lora_weights,
            config.target_modules,
        )

    def _biases(self, model, config: LoraConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        if config.bias == "all":
            return {n: p for n, p in model.named_parameters() if n.endswith(".bias") and ".lora_" not in n}
        if config.bias == "lora_only":
            return {
                f"{path}.base_layer.bias": m.base_layer.bias
                for path, m in lora_layers(model, adapter_name).items()
                if getattr(m.base_layer, "bias", None) is not None
            }
        return {}

    @hookimpl
    def trainable_params(self, model, config: LoraConfig, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        params = {}
        for path, layer in lora_layers(model, adapter_name).items():
            params[f"{path}.lora_A.{adapter_name}.weight"] = layer.lora_A[adapter_name].weight
            params[f"{path}.lora_B.{adapter_name}.weight"] = layer.lora_B[adapter_name].weight
        return {**params, **self._biases(model, config, adapter_name)}

    def tensor_map(self, model, config: LoraConfig, adapter_name: str) -> dict[str, torch.Tensor]:
        out = {}
        for path, layer in lora_layers(model, adapter_name).items():
            out[self.peft_key(path, "lora_A.weight")] = layer.lora_A[adapter_name].weight
            out[self.peft_key(path, "lora_B.weight")] = layer.lora_B[adapter_name].weight
        for n, p in self._biases(model, config, adapter_name).items():
            out[self.peft_key(n)] = p  # PEFT names a wrapped bias by its layer path
        return out

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        for layer in lora_layers(model, adapter_name).values():
            layer.merge(adapter_name)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        for layer in lora_layers(model, adapter_name).values():
            layer.unmerge(adapter_name)

    @hookimpl
    def scale(self, model, config: LoraConfig, adapter_name: str, weight) -> None:
        """ΔW x becomes weight · ΔW x in every layer of the adapter (and ``merge`` folds weight · ΔW)."""
        if config.bias != "none" and not (isinstance(weight, float) and weight == 1.0):
            raise MethodError(
                f"LoRA adapter {adapter_name!r} trains biases (bias={config.bias!r}), which are written into the "
                "base layers themselves, so its effect cannot be weighted; only bias='none' adapters scale"
            )
        for layer in lora_layers(model, adapter_name).values():
            layer.weights[adapter_name] = weight

    @hookimpl
    def unload(self, model, adapter_name: str) -> None:
        """Drop this adapter's A/B; a layer left with no adapter is replaced by its base layer."""
        for path, layer in lora_layers(model, adapter_name).items():
            for d in (layer.lora_A, layer.lora_B, layer.lora_dropout):
                del d[adapter_name]
            layer.scaling.pop(adapter_name)
            layer.weights.pop(adapter_name, None)
            if not len(layer.lora_A):
                replace_module(model, path, layer.base_layer)

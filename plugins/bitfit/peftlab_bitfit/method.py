"""BitFit's registration: the hooks core calls for adapters of method ``bitfit``."""

from __future__ import annotations

import torch

from peftlab import AdapterWeights, Capabilities, Method, copy_into, hookimpl

from . import layer as bitfit
from .config import BitFitConfig
from .select import select_modules


class BitFit(Method):
    name = "bitfit"
    config_class = BitFitConfig
    peft_type = "BITFIT"
    description = "BitFit: train only the bias terms (zero biases added to bias-less linear layers)"
    capabilities = Capabilities(mergeable=True, stackable=True, mixed_batch=True)
    train_defaults = {"learning_rate": 1e-2}

    @hookimpl
    def inject(self, model, config: BitFitConfig, adapter_name: str) -> None:
        paths = select_modules(model, config.biases, config.target_modules, config.add_missing_biases)
        bitfit.inject_bias_deltas(model, adapter_name, paths)

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        return {
            f"{path}.{bitfit.ATTR}.{adapter_name}": getattr(layer, bitfit.ATTR)[adapter_name]
            for path, layer in bitfit.bias_layers(model, adapter_name).items()
        }

    @hookimpl
    def save(self, model, adapter_name: str) -> AdapterWeights:
        # the file holds the fine-tuned bias b + Δb under the layer's own bias name (BitFit's result)
        tensors = {}
        for path, layer in bitfit.bias_layers(model, adapter_name).items():
            delta_b = getattr(layer, bitfit.ATTR)[adapter_name]
            fine_tuned = bitfit.base_bias(layer) + delta_b.detach().float()
            tensors[self.peft_key(path, "bias")] = fine_tuned.to(delta_b.dtype)
        return AdapterWeights({k: v.contiguous() for k, v in tensors.items()})

    @hookimpl
    def load(self, model, adapter_name: str, weights: AdapterWeights) -> None:
        layers = {self.peft_key(path, "bias"): layer for path, layer in bitfit.bias_layers(model, adapter_name).items()}
        saved = {key: torch.empty(getattr(layer, bitfit.ATTR)[adapter_name].shape) for key, layer in layers.items()}
        copy_into(saved, weights.tensors, what=self.name)  # refuses missing keys and other shapes, by name
        with torch.no_grad():
            for key, layer in layers.items():
                delta_b = getattr(layer, bitfit.ATTR)[adapter_name]
                delta_b.copy_((saved[key].to(delta_b.device) - bitfit.base_bias(layer)).to(delta_b.dtype))

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        for layer in bitfit.bias_layers(model, adapter_name).values():
            bitfit.merge(layer, adapter_name)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        for layer in bitfit.bias_layers(model, adapter_name).values():
            bitfit.unmerge(layer, adapter_name)

"""BitFit's registration: the hooks core calls for adapters of method ``bitfit``."""

from __future__ import annotations

import torch

from peftlab import AdapterWeights, Capabilities, Method, MethodError, copy_into, hookimpl

from . import layer as bitfit
from .config import BitFitConfig
from .select import select_modules


class BitFit(Method):
    name = "bitfit"
    config_class = BitFitConfig
    peft_type = "BITFIT"
    description = "BitFit: train only the bias terms (zero biases added to bias-less linear layers)"
    capabilities = Capabilities(
        mergeable=True, stackable=True, mixed_batch=True, combinations=("linear",), scalable=True
    )
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

    @hookimpl
    def scale(self, model, adapter_name: str, weight) -> None:
        """``y = W x + b + weight · Δb`` on every adapted layer (``merge`` folds ``weight · Δb``)."""
        for layer in bitfit.bias_layers(model, adapter_name).values():
            bitfit.set_weight(layer, adapter_name, weight)

    @hookimpl
    def combine(self, parents: list, weights: list[float], combination: str, options: dict) -> tuple[dict, dict]:
        """Weighted average of saved BitFit adapters: bias = Σ wᵢ bᵢ with Σ wᵢ = 1.

        A file holds the fine-tuned bias bᵢ = b + Δbᵢ, not Δbᵢ, and the base bias b is not in it. The merge
        b + Σ wᵢ Δbᵢ = Σ wᵢ bᵢ + (1 − Σ wᵢ) b needs b unless the weights sum to 1, so only such weights are
        accepted (a weighted average of the parents' bias deltas), and every parent must train the same biases."""
        if combination != "linear":
            raise MethodError(f"{self.name} adapters combine by linear, not {combination!r}")
        total = sum(weights)
        if abs(total - 1.0) > 1e-6:
            raise MethodError(
                f"{self.name} combines by a weighted average only: the weights must sum to 1, not {total:g}. A "
                "BitFit file holds the fine-tuned biases b + Δb, not the deltas, and the base bias b it would "
                "need for other weights (Σ wᵢ bᵢ + (1 − Σ wᵢ) b) is not in the files"
            )
        keys = set(parents[0].weights.tensors)
        for p in parents[1:]:
            if set(p.weights.tensors) != keys:
                differ = sorted(keys ^ set(p.weights.tensors))
                raise MethodError(
                    f"{p.path}: the {self.name} parents train different biases ({', '.join(differ[:3])}"
                    f"{' ...' if len(differ) > 3 else ''}): a bias one parent leaves alone needs the base bias, "
                    "which the files do not hold"
                )
        tensors = {}
        for key in sorted(keys):
            ts = [p.weights.tensors[key] for p in parents]
            if len({tuple(t.shape) for t in ts}) > 1:
                raise MethodError(f"the {self.name} parents' {key} have different shapes: another base model?")
            merged = sum(w * t.float() for w, t in zip(weights, ts, strict=True))
            tensors[key] = merged.to(ts[0].dtype).contiguous()
        return {**parents[0].config.to_dict(), "peft_type": self.peft_type}, tensors

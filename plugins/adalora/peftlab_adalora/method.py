"""AdaLoRA's registration: the hooks core calls for adapters of method ``adalora``."""

from __future__ import annotations

import torch

from peftlab import AdapterMismatchError, AdapterWeights, Capabilities, Method, MethodError, copy_into, hookimpl
from peftlab.kit import replace_module
from peftlab_lora import resolve_targets
from peftlab_lora.combine import COMBINATIONS, combine_lora_family

from .budget import PARTS, RankAllocator, part_param, pattern_key
from .config import AdaLoraConfig, check_schedule
from .layer import EPS, AdaLoraLayer, inject_adalora, svd_layers

ALLOCATORS = "_peftlab_adalora_allocators"  # model attribute: {adapter name: RankAllocator} while training


def allocator(model: torch.nn.Module, name: str, config: AdaLoraConfig, create: bool = True) -> RankAllocator | None:
    """The rank allocator of adapter ``name`` (made on the first training step)."""
    allocators = model.__dict__.setdefault(ALLOCATORS, {})  # a plain attribute: not a module, never saved
    if name not in allocators and create:
        allocators[name] = RankAllocator(svd_layers(model, name), name, config)
    return allocators.get(name)


def orthogonal_penalty(layers: dict[str, AdaLoraLayer], name: str) -> torch.Tensor | None:
    """R(P, Q) = mean over every P and Q of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F (the paper's eq. 4)."""
    terms = []
    for layer in layers.values():
        Q, P = layer.lora_A[name].weight, layer.lora_B[name].weight
        for gram in (Q @ Q.T, P.T @ P):  # both r×r
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    return torch.stack(terms).mean() if terms else None


class AdaLoRA(Method):
    name = "adalora"
    config_class = AdaLoraConfig
    peft_type = "ADALORA"
    description = "AdaLoRA: SVD-form LoRA (P Λ Q) whose rank budget moves to the layers that matter"
    capabilities = Capabilities(
        mergeable=True, stackable=True, mixed_batch=True, combinations=COMBINATIONS, scalable=True
    )
    # measured on SmolLM2 (capitals-json, 14 steps of 8, init_r 8 → target_r 4): eval loss 1.363 → 1.286 at
    # 5e-3, → 0.966 at 1e-2, → 0.146 at 2e-2, → 0.119 at 3e-2 (Λ starts at zero, so small LRs barely move it)
    train_defaults = {"learning_rate": 2e-2}

    @hookimpl
    def inject(self, model, config: AdaLoraConfig, adapter_name: str) -> None:
        resolve_targets(model, config)
        paths = inject_adalora(
            model,
            adapter_name,
            config.init_r,
            config.lora_alpha,
            config.lora_dropout,
            config.init_lora_weights,
            config.target_modules,
        )
        if any(type(model.get_submodule(p).base_layer).__name__ == "Conv1D" for p in paths):
            config.fan_in_fan_out = True  # what peft records for GPT-2-style layers

    @hookimpl
    def trainable_params(self, model, adapter_name: str) -> dict[str, torch.nn.Parameter]:
        params = {}
        for path, layer in svd_layers(model, adapter_name).items():
            params[f"{path}.lora_A.{adapter_name}.weight"] = layer.lora_A[adapter_name].weight
            params[f"{path}.lora_B.{adapter_name}.weight"] = layer.lora_B[adapter_name].weight
            params[f"{path}.lora_E.{adapter_name}"] = layer.lora_E[adapter_name]
        return params

    def tensor_map(self, model, config, adapter_name: str) -> dict[str, torch.Tensor]:
        """The live P, Λ, Q under peft's key names (``...q_proj.lora_A``: no ``.weight``)."""
        return {
            self.peft_key(path, part): part_param(layer, part, adapter_name)
            for path, layer in svd_layers(model, adapter_name).items()
            for part in PARTS
        }

    # --- training: the trainer calls these; the user never does -------------------------------------------

    @hookimpl
    def extra_loss(self, model, config: AdaLoraConfig, adapter_name: str) -> torch.Tensor | None:
        if config.orth_reg_weight == 0:
            return None
        penalty = orthogonal_penalty(svd_layers(model, adapter_name), adapter_name)
        return None if penalty is None else config.orth_reg_weight * penalty

    @hookimpl
    def on_train_step(self, model, config: AdaLoraConfig, adapter_name: str, step: int, total_steps: int) -> None:
        """peft's ``update_and_allocate``: score, then prune to the budget of this step."""
        if config.total_step is None:  # take the schedule's length from the trainer, and record it
            config.total_step = check_schedule(config, total_steps, "the trainer's total_steps")
        alloc = allocator(model, adapter_name, config)
        end = config.total_step - config.tfinal  # the step that fixes the final allocation
        if step < end:
            alloc.update_ipt()
            budget, reallocate = alloc.budget_schedule(step, config.total_step)
            if reallocate:
                config.rank_pattern = alloc.mask_to_budget(budget)
        elif step == end:
            config.rank_pattern = alloc.mask_to_budget(alloc.target_bgt)
            alloc.reset_ipt()
        elif config.rank_pattern:
            alloc.mask_using_rank_pattern(config.rank_pattern)  # keep the pruned λ at zero

    # --- disk: peft slices the tensors to the kept triplets and records rank_pattern -----------------------

    @hookimpl
    def save(self, model, config: AdaLoraConfig, adapter_name: str) -> AdapterWeights:
        pattern = config.rank_pattern or {}
        alloc = allocator(model, adapter_name, config, create=False)
        tensors, extra = {}, {}
        for path, layer in svd_layers(model, adapter_name).items():
            keep = pattern.get(pattern_key(path))
            r = layer.rank(adapter_name)
            for part in PARTS:
                full = part_param(layer, part, adapter_name).detach()
                kept = full
                if keep is not None and len(keep) == r and sum(keep) != r:
                    idx = [i for i, kept in enumerate(keep) if kept]  # positions, not a bool mask: works on meta
                    kept = full[:, idx] if part == "lora_B" else full[idx]  # P keeps columns, Q and Λ rows
                elif keep is not None and sum(keep) != r:
                    raise AdapterMismatchError(
                        f"AdaLoRA rank_pattern for {path} has {len(keep)} entries but the layer has rank {r}"
                    )
                tensors[self.peft_key(path, part)] = kept.clone().contiguous()
                if alloc is not None:  # trained through the hooks: keep the unpruned tensors too (below)
                    extra[f"{path}.{part}"] = full.clone().contiguous()
        if alloc is None:  # never trained through the hooks: the PEFT tensors say everything
            return AdapterWeights(tensors)
        # mid-training state PEFT does not keep: the unpruned P, Λ, Q and the importance EMAs, so a
        # checkpoint resumes exactly (the optimizer's state is full-size too)
        extra.update({f"ipt.{k}": v.detach().clone().contiguous() for k, v in alloc.state_tensors().items()})
        return AdapterWeights(tensors, extra)

    @hookimpl
    def load(self, model, config: AdaLoraConfig, adapter_name: str, weights: AdapterWeights) -> None:
        layers = svd_layers(model, adapter_name)
        full = {k: v for k, v in weights.extra.items() if not k.startswith("ipt.")}
        if full:  # our own training checkpoint: restore the unpruned tensors and the allocator
            for path, layer in layers.items():
                E = full.get(f"{path}.lora_E")
                if E is not None and E.shape[0] != layer.rank(adapter_name):
                    layer.resize(adapter_name, E.shape[0])
            copy_into(
                {
                    f"{path}.{part}": part_param(layer, part, adapter_name)
                    for path, layer in layers.items()
                    for part in PARTS
                },
                full,
                what=self.name,
            )
            ipt = {k.removeprefix("ipt."): v for k, v in weights.extra.items() if k.startswith("ipt.")}
            allocator(model, adapter_name, config).load_state_tensors(ipt)
            return
        pattern = _own_keys(config.rank_pattern or {}, adapter_name)
        unknown = sorted(set(pattern) - {pattern_key(p) for p in layers})
        if unknown:
            raise AdapterMismatchError(f"AdaLoRA rank_pattern names {unknown[0]}, which this model does not adapt")
        for path, layer in layers.items():  # peft saved only the kept triplets: shrink to fit them
            keep = pattern.get(pattern_key(path))
            if keep is not None and sum(keep) != layer.rank(adapter_name):
                layer.resize(adapter_name, sum(keep))
        copy_into(self.tensor_map(model, config, adapter_name), weights.tensors, what=self.name)

    @hookimpl
    def combine(self, parents: list, weights: list[float], combination: str, options: dict) -> tuple[dict, dict]:
        """Each parent as LoRA factors (A = Λ⊙Q, B = P, scaling α/r₀), merged by LoRA's maths into a plain LoRA."""
        factors = []
        for p in parents:
            t, scaling = p.weights.tensors, p.config.lora_alpha / (p.config.init_r + EPS)
            paths = [k.removeprefix(self.module_prefix).removesuffix(".lora_E") for k in t if k.endswith(".lora_E")]
            if len(t) != 3 * len(paths):
                raise MethodError(f"{p.path}: AdaLoRA tensors other than P, Λ, Q cannot be combined")
            key = self.peft_key
            factors.append(
                {
                    path: (t[key(path, "lora_A")] * t[key(path, "lora_E")], t[key(path, "lora_B")], scaling)
                    for path in paths
                }
            )
        return combine_lora_family(parents, factors, weights, combination, options, self.module_prefix)

    @hookimpl
    def merge(self, model, adapter_name: str) -> None:
        for layer in svd_layers(model, adapter_name).values():
            layer.merge(adapter_name)

    @hookimpl
    def unmerge(self, model, adapter_name: str) -> None:
        for layer in svd_layers(model, adapter_name).values():
            layer.unmerge(adapter_name)

    @hookimpl
    def scale(self, model, adapter_name: str, weight) -> None:
        """P Λ Q x · α/r₀ becomes weight times it in every layer (the ``LoraLayer`` routing applies it)."""
        for layer in svd_layers(model, adapter_name).values():
            layer.weights[adapter_name] = weight

    @hookimpl
    def unload(self, model, adapter_name: str) -> None:
        """Drop this adapter; a layer left with no adapter is replaced by the layer it wrapped."""
        model.__dict__.get(ALLOCATORS, {}).pop(adapter_name, None)
        for path, layer in svd_layers(model, adapter_name).items():
            layer.remove(adapter_name)
            if not len(layer.lora_A):
                replace_module(model, path, layer.base_layer)


def _own_keys(pattern: dict[str, list[bool]], adapter_name: str) -> dict[str, list[bool]]:
    """peft writes keys without the adapter name, but keeps it while training: accept both."""
    suffix = f".lora_E.{adapter_name}"
    return {(k[: -len(suffix)] + ".lora_E" if k.endswith(suffix) else k): v for k, v in pattern.items()}

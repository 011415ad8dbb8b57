"""Which modules' bias terms BitFit trains: the ``biases`` group, narrowed by ``target_modules``.

A module takes part when it owns a bias that is added on the last dimension of its output
(Linear, GPT-2's Conv1D, LayerNorm), or when it is a linear layer without one, which gets a zero
bias (``add_missing_biases``). RMSNorm and friends have no bias and cannot get one.
"""

from __future__ import annotations

from torch import nn

from peftlab import MethodError
from peftlab.kit import is_linear, layer_stack, output_heads, target_matches

# parts of the path that belong to adapters (ours and other methods'), never BitFit targets themselves
ADAPTER_PARTS = (".base_layer", ".lora_", ".bottleneck.", ".bitfit_bias")
FFN_NAMES = {"mlp", "ffn", "feed_forward", "intermediate", "output", "fc1", "fc2", "block_sparse_moe"}


def owner(module: nn.Module) -> nn.Module:
    """The module whose ``bias`` attribute holds the bias (a LoRA wrapper's is its base layer's)."""
    return getattr(module, "base_layer", module)


def has_bias(module: nn.Module) -> bool:
    bias = getattr(owner(module), "bias", None)
    return (
        isinstance(bias, nn.Parameter)
        and bias.dim() == 1
        and (is_linear(module) or isinstance(owner(module), nn.LayerNorm))
    )


def can_get_bias(module: nn.Module) -> bool:
    """A bias-less layer whose forward would use a ``bias`` set on it (so merging can make it permanent)."""
    base = owner(module)
    return getattr(base, "bias", None) is None and (isinstance(base, nn.Linear | nn.LayerNorm))


def bias_size(module: nn.Module) -> int:
    base = owner(module)
    if getattr(base, "bias", None) is not None:
        return base.bias.shape[0]
    return base.out_features if isinstance(base, nn.Linear) else base.normalized_shape[-1]


def group_of(relative: str) -> str | None:
    """'attention' or 'ffn' for a module path relative to one transformer layer, by its first part."""
    first = relative.split(".", 1)[0]
    if "attn" in first or "attention" in first:
        return "attention"
    if first in FFN_NAMES or "mlp" in first:
        return "ffn"
    return None  # e.g. GPT-2's ln_1/ln_2: only in "all"


def select_modules(model: nn.Module, biases: str, targets: list[str] | str | None, add_missing: bool) -> list[str]:
    """Paths of the modules whose bias terms train (existing biases, or new zero ones)."""
    heads = output_heads(model)
    stack = layer_stack(model)
    if biases != "all" and stack is None:
        raise MethodError(
            f"BitFit biases={biases!r} needs the transformer layers, but {type(model).__name__} has "
            f"no ModuleList of num_hidden_layers modules; use biases='all' with target_modules"
        )
    candidates = {}
    for path, module in model.named_modules():
        if (
            not path
            or any(part in path + "." for part in ADAPTER_PARTS)
            or path in heads
            or any(path.startswith(h + ".") for h in heads)
        ):
            continue
        if biases != "all":
            prefix = stack[0] + "."
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :].split(".", 1)
            if len(relative) < 2 or group_of(relative[1]) != biases:
                continue
        candidates[path] = module
    if targets is not None:
        chosen = {p: m for p, m in candidates.items() if target_matches(p, targets)}
        if not chosen:
            names = sorted({p.rsplit(".", 1)[-1] for p, m in candidates.items() if has_bias(m) or can_get_bias(m)})
            raise MethodError(
                f"BitFit target_modules={targets!r} matched no module of the biases={biases!r} group; "
                f"modules there with a bias (or that can get one): {names}"
            )
        for path, module in chosen.items():
            if has_bias(module):
                continue
            if not can_get_bias(module):
                raise MethodError(
                    f"BitFit cannot train a bias of {path} ({type(owner(module)).__name__}): it has "
                    f"no bias term and cannot get one (only Linear, Conv1D and LayerNorm layers can)"
                )
            if not add_missing:
                raise MethodError(f"{path} has no bias; set add_missing_biases=true to give it a zero bias to train")
        return sorted(chosen)
    chosen = [p for p, m in candidates.items() if has_bias(m) or (add_missing and can_get_bias(m))]
    if not chosen:
        hint = "" if add_missing else "; set add_missing_biases=true to give its linear layers zero biases"
        raise MethodError(f"BitFit biases={biases!r} found no bias term in {type(model).__name__}{hint}")
    return sorted(chosen)

"""Where adapters go: the transformer layers of a model and, inside each, its two sublayers.

An adapter follows a sublayer whose output is in the hidden size and is added to the residual
stream next (Houlsby et al. 2019, Fig. 2). Paths are relative to one transformer layer.
"""

from __future__ import annotations

from torch import nn

from peftlab import MethodError
from peftlab.kit import layer_stack

_DECODER = ("self_attn", "mlp")  # Llama-family decoder layers: attention then MLP
_BERT = ("attention.output.dense", "output.dense")  # the projections before each residual add + LayerNorm

# model_type -> (attention sublayer, feed-forward sublayer), relative to one transformer layer
SUBLAYERS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
            "stablelm",
            "starcoder2",
            "phi",
        ),
        _DECODER,
    ),
    "gpt2": ("attn", "mlp"),
    "gptj": ("attn", "mlp"),
    "gpt_neox": ("attention", "mlp"),
    "opt": ("self_attn", "fc2"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), _BERT),
    "distilbert": ("attention.out_lin", "ffn"),
}


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not size:
        raise MethodError(f"cannot tell the hidden size of {type(model).__name__}: its config has no hidden_size")
    return int(size)


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, ModuleList)`` of the transformer layers: the list with ``num_hidden_layers`` entries."""
    found = layer_stack(model)
    if found is None:
        raise MethodError(
            f"cannot find the transformer layers of {type(model).__name__}: no ModuleList of "
            f"num_hidden_layers={getattr(model.config, 'num_hidden_layers', None)} modules"
        )
    return found


def _children(layer: nn.Module) -> list[str]:
    return [p for p, _ in layer.named_modules() if p and "." not in p]


def sublayer_paths(
    model: nn.Module,
    variant: str,
    layers: list[int] | None,
    attn_module: str | None = None,
    ffn_module: str | None = None,
) -> list[str]:
    """Full module paths of the sublayers whose outputs get an adapter, in layer order."""
    model_type = getattr(model.config, "model_type", "")
    layers_path, stack = find_layers(model)
    known_attn, known_ffn = SUBLAYERS.get(model_type, (None, None))
    attn, ffn = attn_module or known_attn, ffn_module or known_ffn
    wanted = [ffn] if variant == "pfeiffer" else [attn, ffn]
    if None in wanted:
        missing = "ffn_module" if ffn is None else "attn_module"
        raise MethodError(
            f"the bottleneck adapter does not know where the sublayers of model_type {model_type!r} are; pass "
            f"{missing} (and attn_module for the houlsby variant): module paths inside one transformer layer "
            f"({layers_path}.0), whose children are {_children(stack[0])}. Known model types: "
            f"{', '.join(sorted(SUBLAYERS))}"
        )
    indices = list(range(len(stack))) if layers is None else layers
    out_of_range = [i for i in indices if not 0 <= i < len(stack)]
    if out_of_range:
        raise MethodError(
            f"layers={layers} asks for layer {out_of_range[0]}, but the model has {len(stack)} "
            f"layers (indices 0..{len(stack) - 1})"
        )
    paths = []
    for i in indices:
        for rel in wanted:
            try:
                stack[i].get_submodule(rel)
            except AttributeError:
                raise MethodError(
                    f"layer {layers_path}.{i} has no module {rel!r}; its children are "
                    f"{_children(stack[i])} (set attn_module / ffn_module)"
                ) from None
            paths.append(f"{layers_path}.{i}.{rel}")
    return paths

"""Which modules a config's ``target_modules`` selects, by peft's rules, so every method reads it alike.

* a list of names: a module whose path equals a name or ends with ``"." + name`` (``"q_proj"`` selects
  ``model.layers.0.self_attn.q_proj``);
* a string: a regular expression the whole path must match (``r".*\\.(q|v)_proj"``);
* ``"all-linear"``: every linear-like layer except the output head (and a new task head).

Adapter internals are never candidates: a layer an adapter wrapped (``….base_layer``) is represented by its
wrapper, and modules an adapter added under its adapter name (``….lora_A.default``) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from ..errors import MethodError
from ..state import adapter_state

ALL_LINEAR = "all-linear"


def is_linear(module: nn.Module) -> bool:
    """Linear-like: ``nn.Linear``, GPT-2's ``Conv1D``, or a wrapper that says its in/out features (an adapter
    around a linear layer, a bitsandbytes 4-bit layer)."""
    return (
        isinstance(module, nn.Linear)
        or is_conv1d(module)
        or (hasattr(module, "in_features") and hasattr(module, "out_features"))
    )


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a linear layer whose weight is stored transposed, ``[in, out]``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def target_matches(path: str, targets: list[str] | tuple[str, ...] | str) -> bool:
    """Whether ``targets`` (a list of names or one regex) selects the module at ``path``."""
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith("." + t) for t in targets)


def output_heads(model: nn.Module) -> set[str]:
    """Paths of the LM head and of task heads core added (``peftlab_new_modules``): ``all-linear`` skips them."""
    out = set(getattr(model, "peftlab_new_modules", []) or [])
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        out |= {p for p, m in model.named_modules() if m is head}
    return out


def candidates(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: module}`` of the base model's modules, adapter internals left out (see the module docstring)."""
    names = set(adapter_state(model).adapters)
    modules = dict(model.named_modules())
    # what an adapter added lives in a ModuleDict under its adapter name (lora_A["default"], ...)
    internal = tuple(
        f"{p}.{key}" if p else key
        for p, m in modules.items()
        if isinstance(m, nn.ModuleDict)
        for key in m.keys()
        if key in names
    )
    out = {}
    for path, module in modules.items():
        if not path or "base_layer" in path.split(".") or any(path == i or path.startswith(i + ".") for i in internal):
            continue
        out[path] = module
    return out


def match_targets(
    model: nn.Module,
    targets: list[str] | tuple[str, ...] | str | None,
    *,
    default: list[str] | str = ALL_LINEAR,
    accepts: Callable[[nn.Module], bool] = is_linear,
    method: str = "",
    accepted: str = "linear layers",
    supports: str = "it supports Linear and Conv1D layers",
) -> list[str]:
    """Sorted module paths that ``targets`` selects in ``model`` (``None``: ``default``).

    ``accepts`` says which modules the method can adapt (``accepted`` names them in messages, ``supports`` says
    what the method takes): ``all-linear`` takes only accepted linear layers, and a selected module that is not
    accepted is an error naming it. Nothing matched is an error listing the names that could have been meant.
    Errors are ``MethodError`` and start with ``method`` (e.g. ``"LoRA"``)."""
    targets = default if targets is None else targets
    pool = candidates(model)
    if targets == ALL_LINEAR:
        heads = output_heads(model)
        chosen = [
            p
            for p, m in pool.items()
            if accepts(m) and is_linear(m) and not any(p == h or p.startswith(h + ".") for h in heads)
        ]
    else:
        chosen = [p for p in pool if target_matches(p, targets)]
    who = f"{method} " if method else ""
    if not chosen:
        names = sorted({p.rsplit(".", 1)[-1] for p, m in pool.items() if accepts(m)})
        raise MethodError(f"{who}target_modules={targets!r} matched no module; {accepted} here: {names}")
    refused = [p for p in chosen if not accepts(pool[p])]
    if refused:
        raise MethodError(
            f"{who or 'this method '}cannot adapt {refused[0]} ({type(pool[refused[0]]).__name__}); {supports}"
        )
    return sorted(chosen)

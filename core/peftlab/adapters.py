"""Adding, training-prep, merging and activating adapters: core's calls into a method's hooks."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError, MethodError
from .method import MethodConfig
from .plugins import MethodHandle, get_method
from .state import AdapterEntry, adapter_state, set_active


def resolve_method(method: str | MethodHandle) -> MethodHandle:
    return method if isinstance(method, MethodHandle) else get_method(method)


def make_config(method: str | MethodHandle, config: MethodConfig | dict[str, Any] | None = None) -> MethodConfig:
    """A method's config from an instance, a dict of values, or ``None`` (the defaults)."""
    handle = resolve_method(method)
    if config is None:
        return handle.config_class()
    if isinstance(config, handle.config_class):
        return config
    if isinstance(config, MethodConfig):
        raise ConfigError(f"method {handle.name!r} takes {handle.config_class.__name__}, got {type(config).__name__}")
    return handle.config_class.from_dict(dict(config), source=f"{handle.name} config")


def model_task(model: torch.nn.Module) -> str:
    """``"SEQ_CLS"`` for sequence-classification models, else ``"CAUSAL_LM"``."""
    return "SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM"


def add_adapter(
    model: torch.nn.Module,
    method: str | MethodHandle,
    config: MethodConfig | dict[str, Any] | None = None,
    name: str = "default",
    *,
    activate: bool = True,
) -> MethodConfig:
    """Inject a new adapter of ``method`` into ``model`` under ``name``; returns its config."""
    handle = resolve_method(method)
    cfg = make_config(handle, config)
    state = adapter_state(model)
    if name in state.adapters:
        raise ConfigError(f"the model already has an adapter named {name!r}; pick another name")
    task = model_task(model)
    if task not in handle.capabilities.task_types:
        raise MethodError(
            f"method {handle.name!r} does not support {task} models "
            f"(supports {', '.join(handle.capabilities.task_types)})"
        )
    if state.adapters and not handle.capabilities.stackable:
        raise MethodError(
            f"method {handle.name!r} cannot share a model with other adapters: "
            f"{handle.capabilities.stack_note or 'it declares stackable=False'}"
        )
    for other_name, entry in state.adapters.items():
        other = get_method(entry.method)
        if not other.capabilities.stackable:
            raise MethodError(
                f"adapter {other_name!r} ({entry.method}) cannot be stacked with another adapter: "
                f"{other.capabilities.stack_note or 'it declares stackable=False'}"
            )
    state.adapters[name] = AdapterEntry(handle.name, cfg)
    was_training = model.training
    try:
        handle.hook("inject")(model=model, config=cfg, adapter_name=name)
    except Exception:
        del state.adapters[name]
        raise
    model.train(was_training)  # new modules (dropout!) follow the model's train/eval mode
    if activate:
        state.active = [*state.active, name] if name not in state.active else state.active
    return cfg


def entry(model: torch.nn.Module, name: str) -> tuple[MethodHandle, AdapterEntry]:
    state = adapter_state(model)
    if name in state.groups and name not in state.adapters:
        raise MethodError(
            f"{name!r} is a composition recipe (a stack of {len(state.groups[name])} adapters: "
            f"{', '.join(state.groups[name])}), not one adapter: act on its members, or merge its parents into one "
            "adapter with peftlab compose"
        )
    if name not in state.adapters:
        raise KeyError(f"no adapter named {name!r}; loaded: {sorted(state.adapters)}")
    e = state.adapters[name]
    return get_method(e.method), e


def adapter_parameters(model: torch.nn.Module, name: str = "default") -> dict[str, torch.nn.Parameter]:
    """The parameters adapter ``name`` trains, as its method declares them."""
    handle, e = entry(model, name)
    params = handle.hook("trainable_params")(model=model, config=e.config, adapter_name=name)
    return dict(params or {})


def task_head_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters of a freshly initialised task head (e.g. a classification ``score`` layer).

    ``load_model`` records the head's module names in ``model.peftlab_new_modules``.
    """
    names = getattr(model, "peftlab_new_modules", ()) or ()
    out = {}
    for mod_name in names:
        for pname, p in model.get_submodule(mod_name).named_parameters():
            out[f"{mod_name}.{pname}"] = p
    return out


def prepare_for_training(model: torch.nn.Module, name: str = "default") -> dict[str, torch.nn.Parameter]:
    """Freeze everything but adapter ``name`` (and a new task head); return the trainable params."""
    trainable = {**adapter_parameters(model, name), **task_head_parameters(model)}
    if not trainable:
        raise MethodError(f"adapter {name!r} declares no trainable parameters")
    ids = {id(p) for p in trainable.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return trainable


def count_parameters(model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter]) -> dict[str, float]:
    """Trainable parameter count, total count and the trainable share in percent."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    n = sum(p.numel() for p in {id(p): p for p in trainable.values()}.values())
    return {"trainable": n, "total": total, "percent": 100.0 * n / max(total, 1)}


def _require_mergeable(handle: MethodHandle, name: str) -> None:
    if not handle.capabilities.mergeable:
        raise MethodError(
            f"adapter {name!r} ({handle.name}) cannot be merged: "
            f"{handle.capabilities.merge_note or 'the method is not mergeable'}"
        )


def merge_adapter(model: torch.nn.Module, name: str = "default") -> None:
    """Fold adapter ``name`` into the base weights (mergeable methods only)."""
    handle, e = entry(model, name)
    _require_mergeable(handle, name)
    if e.merged:
        return
    handle.hook("merge")(model=model, config=e.config, adapter_name=name)
    e.merged = True


def unmerge_adapter(model: torch.nn.Module, name: str = "default") -> None:
    handle, e = entry(model, name)
    if not e.merged:
        return
    handle.hook("unmerge")(model=model, config=e.config, adapter_name=name)
    e.merged = False


def merge_and_unload(model: torch.nn.Module, name: str = "default") -> torch.nn.Module:
    """Merge adapter ``name`` and remove its modules: a plain ``transformers`` model with merged weights."""
    handle, e = entry(model, name)
    _require_mergeable(handle, name)  # the first reason a user needs: it cannot merge at all
    if not handle.implements("unload"):
        raise MethodError(
            f"method {handle.name!r} cannot remove its modules (no unload hook), so the merged "
            "model cannot be saved as a plain model"
        )
    merge_adapter(model, name)
    handle.hook("unload")(model=model, config=e.config, adapter_name=name)
    state = adapter_state(model)
    del state.adapters[name]
    state.active = [n for n in state.active if n != name]
    return model


def _check_weight(weight: Any, name: str) -> float | torch.Tensor:
    """``weight`` as a float or a 0-dim floating tensor (kept as it is, so its graph stays), refusing anything else,
    NaN and infinities with a message naming adapter ``name``."""
    if isinstance(weight, torch.Tensor):
        if weight.dim() != 0 or not weight.is_floating_point():
            raise ConfigError(
                f"the weight of adapter {name!r} must be a number or a 0-dim floating tensor, got a "
                f"{weight.dtype} tensor of shape {tuple(weight.shape)}"
            )
        value = float(weight.detach())
    elif isinstance(weight, (int, float)) and not isinstance(weight, bool):
        value = weight = float(weight)
    else:
        raise ConfigError(f"the weight of adapter {name!r} must be a number, got {type(weight).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"the weight of adapter {name!r} must be a finite number, got {value}")
    return weight


def set_weight(model: torch.nn.Module, name: str, weight: float | torch.Tensor) -> None:
    """Multiply adapter ``name``'s effect by ``weight`` (a float or a 0-dim tensor; 1 = as trained, 0 = as if absent)
    through its method's ``scale`` hook. A tensor that requires grad receives gradients through forward (learned
    mixtures). A method that cannot be weighted (``scalable=False``) is refused with its ``scale_note``; weight 1.0
    is always accepted (it changes nothing). A merged adapter is unmerged, reweighted and merged again."""
    handle, e = entry(model, name)
    weight = _check_weight(weight, name)
    if not handle.capabilities.scalable:
        if not isinstance(weight, torch.Tensor) and weight == 1.0:
            e.weight = 1.0
            return
        raise MethodError(
            f"adapter {name!r} ({handle.name}) cannot be weighted: "
            f"{handle.capabilities.scale_note or 'the method declares scalable=False'}. Use weight 1 for it"
        )
    merged = e.merged
    if merged:
        unmerge_adapter(model, name)
    handle.hook("scale")(model=model, config=e.config, adapter_name=name, weight=weight)
    e.weight = weight
    if merged:
        merge_adapter(model, name)


def get_weight(model: torch.nn.Module, name: str) -> float | torch.Tensor:
    """The weight ``set_weight`` gave adapter ``name`` (1.0 when never set)."""
    return entry(model, name)[1].weight


def extra_loss(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    handle, e = entry(model, name)
    return handle.hook("extra_loss")(model=model, config=e.config, adapter_name=name)


def make_optimizer(
    model: torch.nn.Module, name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The optimizer adapter ``name``'s method asks for (``make_optimizer`` hook), else ``torch.optim.AdamW``."""
    handle, e = entry(model, name)
    made = handle.hook("make_optimizer")(
        model=model, config=e.config, adapter_name=name, params=params, lr=lr, weight_decay=weight_decay
    )
    return made if made is not None else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def on_train_step(model: torch.nn.Module, name: str, step: int, total_steps: int) -> None:
    handle, e = entry(model, name)
    handle.hook("on_train_step")(model=model, config=e.config, adapter_name=name, step=step, total_steps=total_steps)


__all__ = [
    "add_adapter",
    "adapter_parameters",
    "prepare_for_training",
    "merge_adapter",
    "unmerge_adapter",
    "count_parameters",
    "merge_and_unload",
    "set_active",
    "set_weight",
    "get_weight",
    "make_config",
    "model_task",
]

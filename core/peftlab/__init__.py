"""peftlab: parameter-efficient fine-tuning with every method a plugin.

The public API a plugin or a script uses is re-exported here; ``peftlab.hookspecs`` documents
the hooks and ``peftlab.testing.check_method`` checks a method against the contract.

Names are imported on first use (PEP 562 ``__getattr__``): ``import peftlab`` and ``from peftlab import
hookimpl`` load neither torch nor transformers, so the CLI's ``--help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "adapters": (
        "adapter_parameters",
        "add_adapter",
        "count_parameters",
        "make_config",
        "merge_adapter",
        "merge_and_unload",
        "model_task",
        "prepare_for_training",
        "unmerge_adapter",
    ),
    "errors": (
        "AdapterError",
        "AdapterMismatchError",
        "ConfigError",
        "MethodError",
        "PeftlabError",
        "PluginConflictError",
        "UnknownMethodError",
    ),
    "hookspecs": ("hookimpl",),
    "io": ("load_adapter", "read_adapter", "save_adapter"),
    "method": ("AdapterWeights", "Capabilities", "Method", "MethodConfig", "copy_into", "option"),
    "plugins": ("get_method", "methods", "registry"),
    "state": ("active_adapters", "adapter_state", "mixed_batch", "set_active"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [  # the names of _EXPORTS (a test checks it), spelled out for linters
    "AdapterError",
    "AdapterMismatchError",
    "AdapterWeights",
    "Capabilities",
    "ConfigError",
    "Method",
    "MethodConfig",
    "MethodError",
    "PeftlabError",
    "PluginConflictError",
    "UnknownMethodError",
    "active_adapters",
    "adapter_parameters",
    "adapter_state",
    "add_adapter",
    "copy_into",
    "count_parameters",
    "get_method",
    "hookimpl",
    "load_adapter",
    "make_config",
    "merge_adapter",
    "merge_and_unload",
    "methods",
    "mixed_batch",
    "model_task",
    "option",
    "prepare_for_training",
    "read_adapter",
    "registry",
    "save_adapter",
    "set_active",
    "unmerge_adapter",
]


def __getattr__(name: str) -> Any:
    """A public name (imported from its submodule on first use) or a submodule (``peftlab.train``)."""
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .adapters import (
        adapter_parameters,
        add_adapter,
        count_parameters,
        make_config,
        merge_adapter,
        merge_and_unload,
        model_task,
        prepare_for_training,
        unmerge_adapter,
    )
    from .errors import (
        AdapterError,
        AdapterMismatchError,
        ConfigError,
        MethodError,
        PeftlabError,
        PluginConflictError,
        UnknownMethodError,
    )
    from .hookspecs import hookimpl
    from .io import load_adapter, read_adapter, save_adapter
    from .method import AdapterWeights, Capabilities, Method, MethodConfig, copy_into, option
    from .plugins import get_method, methods, registry
    from .state import active_adapters, adapter_state, mixed_batch, set_active

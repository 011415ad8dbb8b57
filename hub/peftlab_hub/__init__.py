"""peftlab-hub: the layer between peftlab and the Hugging Face Hub — push, pull, search, the adapter doctor,
model cards — and the local adapter store (the offline hub). Core never imports it; the CLI and the app do."""

import importlib
import sys
import types
from typing import Any

# public name -> its submodule, imported on first use (PEP 562): core's CLI reads ``add_commands`` for every
# ``peftlab`` call, ``--help`` included, and must not pay for torch, the model code and huggingface_hub there
_WHERE = {
    "Card": "card",
    "build_card": "card",
    "add_commands": "cli",
    "compose": "compose",
    "Check": "doctor",
    "Report": "doctor",
    "check": "doctor",
    "diagnose": "doctor",
    "PullResult": "pull",
    "provenance": "pull",
    "pull": "pull",
    "PushResult": "push",
    "push": "push",
    "HubError": "remote",
    "HubRef": "remote",
    "parse_ref": "remote",
    "ResolvedAdapter": "resolve",
    "resolve_adapter": "resolve",
    "HubAdapter": "search",
    "search": "search",
    "StackError": "stack",
    "stack": "stack",
    "learn": "learn",
    "sweep": "sweep",
    "AdapterInfo": "store",
    "AdapterStore": "store",
    "default_store_dir": "store",
}


def __getattr__(name: str) -> Any:
    """A public name (from its submodule, imported on first use) or a submodule (``peftlab_hub.remote``)."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Importing submodule ``search`` binds it as this package's attribute ``search``; the public name is the
    function of that name (as when this file imported it eagerly), so such a binding is dropped."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE and _WHERE[name] == name:
            self.__dict__.pop(name, None)  # __getattr__ fetches the function on first use
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "AdapterInfo",
    "AdapterStore",
    "Card",
    "Check",
    "HubAdapter",
    "HubError",
    "HubRef",
    "PullResult",
    "PushResult",
    "Report",
    "ResolvedAdapter",
    "add_commands",
    "build_card",
    "check",
    "compose",
    "default_store_dir",
    "diagnose",
    "parse_ref",
    "provenance",
    "pull",
    "push",
    "resolve_adapter",
    "search",
    "stack",
    "StackError",
    "learn",
    "sweep",
]

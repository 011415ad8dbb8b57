"""The plugin manager: loads entry points of group ``peftlab`` and keeps one registration per method."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import threading
import warnings
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .errors import PluginConflictError, UnknownMethodError

if TYPE_CHECKING:  # .method imports torch: loaded when a plugin registers, so the catalog (catalog.py) reads
    from .method import MethodConfig  # ENTRY_POINT_GROUP without it

ENTRY_POINT_GROUP = "peftlab"
# every hook spec but register_methods is a method hook (hookspecs.py, in the order written there)
METHOD_HOOKS = tuple(
    name
    for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, "peftlab_spec") and name != "register_methods"
)
REQUIRED_HOOKS = ("inject", "trainable_params", "save", "load")


def _declared(obj: Any, attr: str) -> Any:
    """A method's declaration ``attr`` (``hookspecs.ATTRIBUTES``), ``peftlab.Method``'s default when it has none."""
    from .method import Method

    return getattr(obj, attr, getattr(Method, attr))


class MethodHandle:
    """A registered method: its declarations plus callers that reach only its own hooks."""

    def __init__(self, obj: Any, plugin: str, pm: pluggy.PluginManager):
        self.obj = obj
        self.plugin = plugin  # the distribution / plugin that registered it
        self._pm = pm
        self._callers: dict[str, tuple[frozenset, Any]] = {}

    # the declarations of hookspecs.ATTRIBUTES, read from the registered object
    name = property(lambda self: _declared(self.obj, "name"))
    config_class = property(lambda self: _declared(self.obj, "config_class"))
    peft_type = property(lambda self: _declared(self.obj, "peft_type"))
    capabilities = property(lambda self: _declared(self.obj, "capabilities"))
    description = property(lambda self: _declared(self.obj, "description"))
    module_prefix = property(lambda self: _declared(self.obj, "module_prefix"))
    train_defaults = property(lambda self: dict(_declared(self.obj, "train_defaults") or {}))

    def hook(self, name: str):
        """A caller for hook ``name`` that only reaches this method's implementation."""
        # the caller excludes the plugins registered *now*: one registered later (another method, a test's)
        # would otherwise reach this method's calls, so the cache is keyed by the current set of plugins
        others = [p for p in self._pm.get_plugins() if p is not self.obj]
        key = frozenset(map(id, others))
        cached = self._callers.get(name)
        if cached is None or cached[0] != key:
            cached = self._callers[name] = (key, self._pm.subset_hook_caller(name, remove_plugins=others))
        return cached[1]

    def implements(self, name: str) -> bool:
        return any(impl.plugin is self.obj for impl in getattr(self._pm.hook, name).get_hookimpls())

    def claims(self, data: dict) -> bool:
        """The ``claims_peft_config`` hook (a method without it claims every config of its ``peft_type``)."""
        if not self.implements("claims_peft_config"):
            return True
        return bool(self.hook("claims_peft_config")(data=data))

    def make_config(self, **kwargs: Any) -> MethodConfig:
        return self.config_class(**kwargs)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "peft_type": self.peft_type,
            "description": self.description,
            "capabilities": dataclasses.asdict(self.capabilities),
            "train_defaults": self.train_defaults,
            "fields": [f.to_json() for f in self.config_class.fields()],
        }


def _declaration_problem(obj: Any) -> str | None:
    """What is wrong with the declarations other than name, config_class and capabilities (checked above)."""
    from .train import TrainArgs  # train imports plugins: import here

    peft_type = _declared(obj, "peft_type")
    if not isinstance(peft_type, str) or not peft_type:
        return "peft_type must be a non-empty string (written to adapter_config.json)"
    for attr in ("description", "module_prefix"):
        if not isinstance(_declared(obj, attr), str):
            return f"{attr} must be a string"
    prefix = _declared(obj, "module_prefix")
    if prefix and not prefix.endswith("."):
        return f"module_prefix must end with '.', got {prefix!r}"
    defaults = _declared(obj, "train_defaults")
    if not isinstance(defaults, dict):
        return "train_defaults must be a dict of TrainArgs settings"
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(TrainArgs)})
    if unknown:
        return f"train_defaults has {unknown}, which are not trainer settings (TrainArgs fields)"
    return None


class Registry:
    """All installed methods. Built once per process by ``registry()``; tests may build their own."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("peftlab")
        self.pm.add_hookspecs(hookspecs)
        self.methods: dict[str, MethodHandle] = {}
        self.broken: dict[str, str] = {}  # plugin → why it failed to import (reported, not fatal)

    def add_plugin(self, plugin: Any, name: str) -> None:
        """Register a plugin module/object and the methods its ``register_methods`` declares."""
        impl = getattr(plugin, "register_methods", None)
        if impl is None:
            raise PluginConflictError(f"plugin {name!r} has no register_methods hook")
        impl(register=lambda method: self.add_method(method, plugin=name))

    def add_method(self, obj: Any, plugin: str) -> MethodHandle:
        """Register one method object (what ``register(...)`` does inside ``register_methods``)."""
        from .method import Capabilities, MethodConfig

        name = getattr(obj, "name", "")
        if not name or not isinstance(name, str):
            raise PluginConflictError(f"plugin {plugin!r} registered a method without a name")
        if name in self.methods:
            other = self.methods[name].plugin
            raise PluginConflictError(
                f"method {name!r} is provided by two plugins: {other!r} and {plugin!r}; uninstall one"
            )
        cfg = getattr(obj, "config_class", None)
        if not (isinstance(cfg, type) and issubclass(cfg, MethodConfig) and dataclasses.is_dataclass(cfg)):
            raise PluginConflictError(f"method {name!r} ({plugin}): config_class must be a MethodConfig dataclass")
        if not isinstance(getattr(obj, "capabilities", None), Capabilities):
            raise PluginConflictError(f"method {name!r} ({plugin}): capabilities must be a peftlab.Capabilities")
        problem = _declaration_problem(obj)
        if problem:
            raise PluginConflictError(f"method {name!r} ({plugin}): {problem}")
        try:
            self.pm.register(obj, name=f"{plugin}:{name}")
        except pluggy.PluginValidationError as e:
            raise PluginConflictError(f"method {name!r} ({plugin}): {e}") from None
        handle = MethodHandle(obj, plugin, self.pm)
        missing = [h for h in REQUIRED_HOOKS if not handle.implements(h)]
        if missing:
            self.pm.unregister(obj)
            raise PluginConflictError(f"method {name!r} ({plugin}) does not implement {', '.join(missing)}")
        if handle.capabilities.mergeable and not handle.implements("merge"):
            self.pm.unregister(obj)
            raise PluginConflictError(f"method {name!r} ({plugin}) says mergeable but has no merge hook")
        if handle.capabilities.scalable and not handle.implements("scale"):
            self.pm.unregister(obj)
            raise PluginConflictError(f"method {name!r} ({plugin}) says scalable but has no scale hook")
        self.methods[name] = handle
        return handle

    def load_entry_points(self) -> None:
        """Load every installed plugin. One that fails to import is reported in ``broken`` (and warned
        about) so the others still work; a malformed or clashing registration is an error."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.name
            try:
                plugin = ep.load()
            except Exception as e:  # noqa: BLE001 - any import failure of third-party code
                self.broken[dist] = f"{type(e).__name__}: {e}"
                warnings.warn(f"peftlab plugin {dist!r} failed to load and is skipped: {e}", stacklevel=2)
                continue
            self.add_plugin(plugin, name=dist)

    def get(self, name: str) -> MethodHandle:
        try:
            return self.methods[name]
        except KeyError:
            installed = ", ".join(sorted(self.methods)) or "none"
            raise UnknownMethodError(
                f"unknown method {name!r}; installed methods: {installed}. "
                f"A method comes from a plugin package (entry-point group {ENTRY_POINT_GROUP!r})."
            ) from None

    def for_peft_type(self, peft_type: str, data: dict) -> MethodHandle:
        """The method that should load a PEFT adapter config written without peftlab metadata."""
        candidates = [m for m in self.methods.values() if m.peft_type == peft_type]
        claimed = [m for m in candidates if m.claims(data)]
        if len(claimed) == 1:
            return claimed[0]
        if not candidates:
            types = sorted({m.peft_type for m in self.methods.values()})
            raise UnknownMethodError(f"no installed method loads peft_type {peft_type!r}; known: {types}")
        names = [m.name for m in (claimed or candidates)]
        raise UnknownMethodError(f"several methods could load peft_type {peft_type!r} ({names}); pass method=")

    def __iter__(self):
        return iter(sorted(self.methods.values(), key=lambda m: m.name))


_registry: Registry | None = None
_lock = threading.Lock()


def registry() -> Registry:
    """The process-wide registry of installed methods (entry points loaded on first use)."""
    global _registry
    with _lock:
        if _registry is None:
            reg = Registry()
            reg.load_entry_points()
            _registry = reg
        return _registry


def reset_registry() -> None:
    """Forget loaded plugins so the next ``registry()`` reloads entry points (after an install)."""
    global _registry
    with _lock:
        _registry = None


def get_method(name: str) -> MethodHandle:
    return registry().get(name)


def methods() -> list[MethodHandle]:
    return list(registry())


__all__ = ["Registry", "MethodHandle", "registry", "reset_registry", "get_method", "methods"]

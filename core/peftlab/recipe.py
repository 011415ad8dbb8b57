"""Composition recipes: a stack of saved adapters (of any methods that can stack), each with a weight, kept as a folder
holding ``composition.json`` (and a README card) instead of tensors.

``composition.json`` names each parent as it was given (a folder, a local store name or a Hub id), with the Hub commit
it was pinned to, the sha256 of its weights file (and, in recipes from this version on, of its ``adapter_config.json``
and its ``peftlab_extra.safetensors`` when it has one: alpha, rsLoRA or the targets change what the same weights do),
its method and adapter name; then the weights, the combination
(``"stack"``), and the base model (id and fingerprint). ``peftlab.load_adapter(model, RECIPE)`` loads every parent
into ``model`` under ``<name>__<i>``, refusing a parent whose weights changed, weights each through
``peftlab.adapters.set_weight`` and records the group ``<name>``: ``set_active``/``active_adapters``/``mixed_batch``
take the group's name wherever they take an adapter's. Parents named by store name or Hub id are resolved through
``peftlab_hub`` (imported only then: core runs without it); a relative folder is relative to the recipe folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AdapterError, AdapterMismatchError, ConfigError, MethodError

RECIPE_FILE = "composition.json"
FORMAT_VERSION = 1
COMBINATION = "stack"
SOURCES = ("folder", "store", "hub")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a Hub parent is pinned to a full commit sha, never a branch
PULLED_COPY = re.compile(r"^parents/[0-9]+$")  # where a pulled recipe keeps its copy of each Hub parent


def is_recipe(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a composition recipe's folder."""
    return (Path(path) / RECIPE_FILE).is_file()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_weights(weights: list[Any], n_parents: int) -> list[float]:
    """One finite number per parent, or a ``ConfigError`` saying what is wrong."""
    if len(weights) != n_parents:
        raise ConfigError(f"{len(weights)} weight(s) for {n_parents} parent(s): give one weight per parent")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real):  # numpy's floats too
            raise ConfigError(f"weight {i + 1} ({w!r}) is not a number")
        if not math.isfinite(w):
            raise ConfigError(f"weight {i + 1} is {w}: weights must be finite numbers")
        out.append(float(w))
    return out


@dataclass
class Parent:
    """One parent of a recipe, as ``composition.json`` records it."""

    ref: str  # as given: a folder, a store name or a Hub id
    source: str  # "folder" | "store" | "hub"
    method: str
    adapter_name: str
    weights_sha256: str
    path: str | None = None  # folder parents: relative to the recipe folder (or absolute)
    repo_id: str | None = None  # Hub parents: the repo and the commit it is pinned to
    sha: str | None = None
    config_sha256: str | None = None  # its adapter_config.json (None: an older recipe, which pinned the weights only)
    extra_sha256: str | None = None  # its peftlab_extra.safetensors (None: it has none, or an older recipe)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def describe(self) -> str:
        return f"{self.ref}@{self.sha[:12]}" if self.sha else self.ref


@dataclass
class Recipe:
    folder: Path
    name: str
    parents: list[Parent]
    weights: list[float]
    base_model: str
    base_fingerprint: dict[str, Any]
    task_type: str
    data: dict[str, Any] = field(default_factory=dict)


def read_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check ``composition.json`` (nothing is resolved or loaded)."""
    folder = Path(path)
    file = folder / RECIPE_FILE
    if not file.is_file():
        raise AdapterError(f"{folder} is not a composition recipe: {RECIPE_FILE} is missing")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{file}: expected a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise AdapterError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise AdapterError(
            f"{file}: format_version {version} was written by a newer peftlab (this one reads up to "
            f"{FORMAT_VERSION}); upgrade peftlab"
        )
    if data.get("combination") != COMBINATION:
        raise AdapterError(f"{file}: combination {data.get('combination')!r} is not {COMBINATION!r}")
    raw = data.get("parents")
    if not isinstance(raw, list) or not raw:
        raise AdapterError(f"{file}: 'parents' must be a non-empty list")
    parents = []
    for i, p in enumerate(raw):
        need = ("ref", "source", "method", "adapter_name", "weights_sha256")
        if not isinstance(p, dict) or any(not isinstance(p.get(k), str) for k in need):
            raise AdapterError(f"{file}: parent {i + 1} must be an object with {', '.join(need)}")
        if p["source"] not in SOURCES:
            raise AdapterError(f"{file}: parent {i + 1} has source {p['source']!r}, not one of {SOURCES}")
        if p["source"] == "hub" and not (p.get("repo_id") and p.get("sha")):
            raise AdapterError(f"{file}: Hub parent {p['ref']!r} needs repo_id and the pinned commit sha")
        if p["source"] == "hub" and not COMMIT.match(str(p["sha"])):
            raise AdapterError(
                f"{file}: Hub parent {p['ref']!r} must be pinned to a commit sha (40 hex digits), not {p['sha']!r}"
            )
        for key in ("config_sha256", "extra_sha256"):
            if p.get(key) is not None and not SHA256.match(str(p[key])):
                raise AdapterError(f"{file}: parent {i + 1}'s {key} must be a sha256 (64 hex digits), got {p[key]!r}")
        parents.append(Parent(**{k: p.get(k) for k in Parent.__dataclass_fields__}))
    try:
        weights = check_weights(list(data.get("weights") or []), len(parents))
    except ConfigError as e:
        raise AdapterError(f"{file}: {e}") from None
    return Recipe(
        folder,
        str(data.get("name") or folder.name),
        parents,
        weights,
        str(data.get("base_model") or "unknown"),
        dict(data.get("base_fingerprint") or {}),
        str(data.get("task_type") or "CAUSAL_LM"),
        data,
    )


def _hub(why: str):
    try:
        import peftlab_hub
    except ImportError:
        raise AdapterError(f"{why} needs peftlab-hub (pip install peftlab-hub)") from None
    return peftlab_hub


def parent_folder(recipe: Recipe, parent: Parent, *, token: str | None = None) -> Path:
    """The folder holding ``parent`` now: a folder (relative ones from the recipe folder), the store's copy, or the
    Hub snapshot at the pinned commit. A missing parent, or one that is itself a recipe (the recipe's own folder,
    say: loading or checking it would never end), is an ``AdapterError`` naming it."""
    what = f"parent {parent.describe()!r} of recipe {recipe.folder}"
    folder = _parent_folder(recipe, parent, what, token)
    if is_recipe(folder):
        raise AdapterError(f"{what} is itself a recipe ({folder}); a recipe's parents must be adapters")
    return folder


def _parent_folder(recipe: Recipe, parent: Parent, what: str, token: str | None) -> Path:
    if parent.source == "folder":
        folder = Path(parent.path or parent.ref).expanduser()
        folder = folder if folder.is_absolute() else recipe.folder / folder
        if not folder.is_dir():
            raise AdapterError(f"{what} is missing: no folder {folder}")
        return folder
    # a pulled recipe keeps a copy of each Hub parent beside it, at parents/<i> (pull writes that path); any other
    # path of a Hub parent (a recipe as fetched from the Hub says what it likes) is not followed: the Hub is asked
    if parent.source == "hub" and parent.path and PULLED_COPY.match(parent.path):
        local = recipe.folder / parent.path
        if local.is_dir():
            return local
    hub = _hub(f"{what} (a {parent.source} adapter)")
    if parent.source == "store":
        try:  # the store's own name check: "../x" or "/abs" would reach outside it
            folder = hub.AdapterStore().path(parent.ref)
        except AdapterError as e:
            raise AdapterError(f"{what}: {e}") from None
        if not folder.is_dir():
            raise AdapterError(f"{what} is missing: the local store ({folder.parent}) has no {parent.ref!r}")
        return folder
    try:
        return hub.pull(parent.repo_id, revision=parent.sha, token=token, keep_in_cache=True, check_first=False).path
    except AdapterError as e:
        raise AdapterError(f"{what} cannot be had: {e}") from None


def pins(folder: str | os.PathLike) -> dict[str, str]:
    """What a recipe records of a parent's files in ``folder`` (an adapter's own folder): ``weights_sha256``,
    ``config_sha256`` and, when it has one, ``extra_sha256``."""
    from .io import CONFIG_FILE, EXTRA_FILE, WEIGHTS_FILE

    folder = Path(folder)
    out = {"weights_sha256": sha256_file(folder / WEIGHTS_FILE), "config_sha256": sha256_file(folder / CONFIG_FILE)}
    if (folder / EXTRA_FILE).is_file():
        out["extra_sha256"] = sha256_file(folder / EXTRA_FILE)
    return out


def changed_file(parent: Parent, folder: str | os.PathLike) -> tuple[str, str | None, str | None] | None:
    """The first of ``parent``'s pinned files in ``folder`` that is not as the recipe recorded, as ``(file name,
    sha256 now, sha256 recorded)`` (``None`` for a file that is not there, or that the recipe says it had not);
    ``None`` when all are. A recipe that recorded no ``config_sha256`` (an older one) pins the weights only."""
    from .io import CONFIG_FILE, EXTRA_FILE, WEIGHTS_FILE

    folder = Path(folder)
    pinned = [(WEIGHTS_FILE, parent.weights_sha256)]
    if parent.config_sha256 is not None:
        pinned += [(CONFIG_FILE, parent.config_sha256), (EXTRA_FILE, parent.extra_sha256)]
    for name, recorded in pinned:
        file = folder / name
        actual = sha256_file(file) if file.is_file() else None
        if actual != recorded:
            return name, actual, recorded
    return None


def describe_change(change: tuple[str, str | None, str | None]) -> str:
    name, actual, recorded = change
    now = f"has sha256 {actual}" if actual else "is gone"
    was = f"the recipe recorded {recorded}" if recorded else "the recipe recorded no such file"
    return f"its {name} {now}, {was}"


def resolve_parents(recipe: Recipe, *, token: str | None = None) -> list:
    """Every parent read (``AdapterFiles``) and checked against the sha256s the recipe recorded (``changed_file``)."""
    from .io import read_adapter

    out = []
    for parent in recipe.parents:
        folder = parent_folder(recipe, parent, token=token)
        files = read_adapter(folder, method=parent.method)
        change = changed_file(parent, files.path)
        if change:
            raise AdapterMismatchError(
                f"parent {parent.describe()!r} of recipe {recipe.folder} changed since the recipe was made: "
                f"{describe_change(change)}. Make the recipe again (peftlab compose --stack) if the change is meant"
            )
        out.append(files)
    return out


def check_stack(files: list, weights: list[float], labels: list[str]) -> None:
    """Refuse a stack whose methods cannot share a model, or a weight other than 1 for a method that cannot scale."""
    for f, w, label in zip(files, weights, labels, strict=True):
        caps = f.method.capabilities
        if len(files) > 1 and not caps.stackable:
            raise MethodError(
                f"{label}: {f.method.name} adapters cannot be stacked with others: "
                f"{caps.stack_note or 'the method declares stackable=False'}"
            )
        if w != 1.0 and not caps.scalable:
            raise MethodError(
                f"{label}: {f.method.name} adapters cannot be weighted ({w:g}): "
                f"{caps.scale_note or 'the method declares scalable=False'}. Give it weight 1"
            )


def load_recipe(
    model: torch.nn.Module,
    path: str | os.PathLike,
    name: str | None = None,
    *,
    activate: bool = True,
    token: str | None = None,
) -> str:
    """Load the recipe at ``path`` into ``model`` (see the module docstring); returns the group's name. Every parent
    is resolved, hash-checked and checked against the model before the model is touched."""
    from .adapters import set_weight
    from .io import check_base, fingerprint, load_adapter
    from .state import adapter_state

    recipe = read_recipe(path)
    actual = fingerprint(model)
    diff = [
        f"{k}: recipe {v} vs model {actual.get(k)}" for k, v in recipe.base_fingerprint.items() if actual.get(k) != v
    ]
    if diff and recipe.base_fingerprint:
        raise AdapterMismatchError(
            f"recipe {recipe.folder} was made for another base model ({recipe.base_model}): " + "; ".join(diff)
        )
    files = resolve_parents(recipe, token=token)
    labels = [f"parent {p.describe()!r} of recipe {recipe.folder}" for p in recipe.parents]
    check_stack(files, recipe.weights, labels)
    for f in files:
        check_base(f, model)
    state = adapter_state(model)
    group = name or recipe.name
    if group in state.adapters or group in state.groups:
        raise ConfigError(f"the model already has an adapter or recipe named {group!r}; pick another name")
    slot = re.sub(r"[^A-Za-z0-9_-]", "_", group)  # module dicts take no "." in a key
    members = [f"{slot}__{i}" for i in range(len(files))]
    taken = [m for m in members if m in state.adapters]
    if taken:
        raise ConfigError(f"the model already has an adapter named {taken[0]!r}; load the recipe under another name")
    loaded: list[str] = []
    try:
        for member, f in zip(members, files, strict=True):
            load_adapter(model, f.path, member, method=f.method.name, activate=False)
            loaded.append(member)
        for member, w in zip(members, recipe.weights, strict=True):
            set_weight(model, member, w)
    except BaseException:
        _drop(model, loaded)
        raise
    state.groups[group] = members
    if activate:
        state.active = [*state.active, *(m for m in members if m not in state.active)]
    return group


def _drop(model: torch.nn.Module, names: list[str]) -> None:
    """Take half-loaded members out again where their methods can (``unload``), else at least out of the state."""
    from .adapters import entry
    from .state import adapter_state

    state = adapter_state(model)
    for n in reversed(names):
        handle, e = entry(model, n)
        if handle.implements("unload"):
            handle.hook("unload")(model=model, config=e.config, adapter_name=n)
        state.adapters.pop(n, None)
        state.active = [a for a in state.active if a != n]


def representative(path: str | os.PathLike, *, token: str | None = None):
    """The parent whose base model the recipe needs loaded (one whose method needs a special, e.g. quantized, base;
    else the first), as ``AdapterFiles``: what a caller reads to load the base before ``load_adapter``."""
    recipe = read_recipe(path)
    files = resolve_parents(recipe, token=token)
    special = [f for f in files if f.method.capabilities.needs_quantized_base]
    return (special or files)[0]


__all__ = [
    "COMBINATION",
    "FORMAT_VERSION",
    "RECIPE_FILE",
    "Parent",
    "Recipe",
    "check_stack",
    "changed_file",
    "check_weights",
    "is_recipe",
    "load_recipe",
    "pins",
    "read_recipe",
    "representative",
    "resolve_parents",
    "sha256_file",
]

"""The catalog: what ``peftlab methods`` and the CLI's ``--help`` show about the installed methods, read without
importing a plugin, torch or transformers.

It holds every method's ``MethodHandle.to_json()``, each method config's ``FieldSpec``s (its flags) and those of
``TrainArgs`` (the trainer's flags), as JSON in ``$PEFTLAB_CATALOG`` (default: ``catalog/`` in peftlab's cache folder,
``$PEFTLAB_CACHE`` or ``~/.cache/peftlab``), one file per Python environment. It is used while its fingerprint matches
the installed plugin set, computed without importing a plugin: every entry point of group ``peftlab`` (name, value,
distribution and version), the size and mtime of every file of each plugin's top-level package and of peftlab's own
(an editable install changes files without a new version), and the mtime of each site-packages folder (something
installed or removed there). A missing, stale or corrupt catalog is rebuilt by loading the plugins and rewritten
atomically; a catalog that cannot be written (a read-only home) only means the next call loads the plugins again.

The catalog describes; it never runs. A command that trains, evaluates or generates parses its arguments again with
the plugins' own config classes (``cli.main``), and a plugin that fails to load is never cached, so its failure is
reported every time. A flag or method the catalog refuses is checked again against the plugins' own fields
(``cli.main``): when they accept it, the catalog was stale (a change its fingerprint missed), so it is removed and the
next call rebuilds it. ``PEFTLAB_CATALOG=off`` always loads the plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import FieldSpec

FORMAT = 1  # bump when the file's layout or what it holds changes
ENV = "PEFTLAB_CATALOG"


@dataclass
class Catalog:
    """The installed methods as the CLI shows them, JSON-ready (a cached catalog and a fresh one print the same)."""

    methods: list[dict[str, Any]]  # MethodHandle.to_json() of each method, by name
    fields: dict[str, list[dict[str, Any]]]  # method name -> its config's FieldSpecs (the method's flags)
    trainer: list[dict[str, Any]]  # TrainArgs's FieldSpecs (the trainer's flags)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)  # plugin -> why it failed to load

    def method_specs(self, name: str) -> list[FieldSpec] | None:
        """The config fields of method ``name``, ``None`` when no such method is installed."""
        return [FieldSpec(**d) for d in self.fields[name]] if name in self.fields else None

    def trainer_specs(self) -> list[FieldSpec]:
        return [FieldSpec(**d) for d in self.trainer]


def location() -> Path | None:
    """This environment's catalog file, ``None`` when ``PEFTLAB_CATALOG=off`` (or there is no home folder)."""
    folder = os.environ.get(ENV, "")
    if folder.lower() == "off":
        return None
    if not folder:
        from .models import cache_dir  # a light module: torch loads only where a model does

        try:
            folder = str(cache_dir() / "catalog")
        except RuntimeError:  # Path.home() without a home
            return None
    # one file per environment: two virtualenvs sharing the cache folder do not rebuild each other's
    return Path(folder) / f"{hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]}.json"


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _files(locations: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under ``locations`` (folders and files), compiled caches left out."""
    out = []
    for loc in locations:
        if not os.path.isdir(loc):
            out.append((loc, *_stat(loc)))
            continue
        for root, dirs, files in os.walk(loc):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out.extend((os.path.join(root, f), *_stat(os.path.join(root, f))) for f in sorted(files))
    return out


def _package_locations(module: str) -> list[str]:
    """Where the top-level package of ``module`` lives, found without importing it (editable installs too)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    return [spec.origin] if spec.origin else []


def _entry_points() -> list:
    import importlib.metadata

    from .plugins import ENTRY_POINT_GROUP

    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def fingerprint() -> str:
    """A digest of the installed plugin set that changes whenever what it declares may have; no plugin is imported."""
    import peftlab

    h = hashlib.sha256()

    def add(*parts: Any) -> None:
        h.update(repr(parts).encode())
        h.update(b"\0")

    add(FORMAT, sys.version, sys.prefix)
    for entry in sys.path:  # an install, upgrade or uninstall adds or removes entries of its site-packages folder
        if os.path.basename(entry.rstrip(os.sep)) in ("site-packages", "dist-packages"):
            add("site", entry, *_stat(entry))
    add("peftlab", *_files(list(peftlab.__path__)))  # TrainArgs, Method's defaults, the schema, the kit
    for ep in _entry_points():
        dist = ep.dist
        add("plugin", ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
        add(*_files(_package_locations(ep.module)))
    return h.hexdigest()


def build() -> Catalog:
    """The catalog read from the plugins themselves: a fresh ``Registry`` loads every entry point."""
    from .plugins import Registry
    from .schema import fields_of
    from .train import TrainArgs

    def specs(fields: list[FieldSpec]) -> list[dict[str, Any]]:
        return [{f.name: getattr(s, f.name) for f in dataclasses.fields(FieldSpec)} for s in fields]

    reg = Registry()
    reg.load_entry_points()
    data = {
        "methods": [m.to_json() for m in reg],
        "fields": {m.name: specs(m.config_class.fields()) for m in reg},
        "trainer": specs(fields_of(TrainArgs)),
    }
    # as JSON, as `methods --json` prints it (tuples become lists, other values their str): a catalog read back
    # from the file is then the same as this one
    return Catalog(**json.loads(json.dumps(data, default=str)), broken=dict(reg.broken))


def _read(path: Path, digest: str) -> Catalog | None:
    """The catalog in ``path`` if it is whole and was written for ``digest``, else ``None``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["format"] != FORMAT or data["fingerprint"] != digest:
            return None
        catalog = Catalog(methods=data["methods"], fields=data["fields"], trainer=data["trainer"])
        for m in catalog.methods:  # what `peftlab methods` prints, and every flag, can be built
            if not (
                all(isinstance(m[k], str) for k in ("name", "description", "plugin"))
                and isinstance(m["capabilities"], dict)
            ):
                return None
            catalog.method_specs(m["name"])
        catalog.trainer_specs()
    except (OSError, ValueError, KeyError, TypeError):  # missing, truncated, edited by hand
        return None
    return catalog


def _write(path: Path, catalog: Catalog, digest: str) -> None:
    """Write atomically (a reader sees the old file or the new one); failing to write is not an error."""
    data = {"format": FORMAT, "fingerprint": digest, "methods": catalog.methods, "fields": catalog.fields}
    data["trainer"] = catalog.trainer
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # hosts sharing a cache
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def forget() -> None:
    """Remove this environment's catalog file (the CLI found it stale), so the next call rebuilds it."""
    path = location()
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def load() -> Catalog:
    """The installed methods' catalog: from the cache file when it matches the installed plugins, else built from
    the plugins (and cached, unless a plugin failed to load or this process had imported them before: a long-running
    process may hold modules older than their files)."""
    path = location()
    if path is None:
        return build()
    digest = fingerprint()
    catalog = _read(path, digest)
    if catalog is not None:
        return catalog
    fresh = not any(
        name in sys.modules for name in ["peftlab.train", *(ep.module.split(".")[0] for ep in _entry_points())]
    )
    catalog = build()
    if fresh and not catalog.broken:
        _write(path, catalog, digest)
    return catalog

"""A local adapter store: one folder per adapter, validated on the way in, listed with its facts."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab import AdapterError, read_adapter
from peftlab.io import atomic_dir
from peftlab.models import cache_dir
from peftlab.recipe import COMBINATION, is_recipe, read_recipe

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _copy_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dst / f.name)


def default_store_dir() -> Path:
    return Path(os.environ.get("PEFTLAB_STORE") or cache_dir() / "adapters")


@dataclass
class AdapterInfo:
    name: str
    path: Path
    method: str
    peft_type: str
    base_model: str
    task_type: str
    metrics: dict[str, Any] = field(default_factory=dict)


class AdapterStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_store_dir()

    def path(self, name: str) -> Path:
        """Where the adapter ``name`` is (or would be) kept; an ``AdapterError`` for a name that is not a plain
        store name (no slashes, no '..'), so that no name reaches outside the store."""
        return self._path(name)

    def _path(self, name: str) -> Path:
        if not NAME.match(name) or ".." in name:
            raise AdapterError(
                f"invalid adapter name {name!r}: use letters, digits, '.', '_' and '-' (no '..', no slashes)"
            )
        return self.root / name

    def add(self, folder: str | os.PathLike, name: str, *, overwrite: bool = False) -> AdapterInfo:
        """Validate ``folder`` as an adapter, then copy it in atomically under ``name``."""
        files = read_adapter(folder)  # refuses pickles, corrupt files, unknown methods before anything is written
        return self.add_with(name, lambda tmp: _copy_files(Path(files.path), tmp), overwrite=overwrite)

    def add_with(self, name: str, write: Callable[[Path], None], *, overwrite: bool = False) -> AdapterInfo:
        """Store the folder ``write(tmp)`` fills as ``name``, atomically: a failure leaves the store as it was."""
        target = self._path(name)
        if target.exists() and not overwrite:
            raise AdapterError(f"the store already has an adapter named {name!r}; pass overwrite=True")
        atomic_dir(target, write)
        return self.info(name)

    def info(self, name: str) -> AdapterInfo:
        path = self._path(name)
        if is_recipe(path):  # a composition recipe (pulled): a stack of adapters, kept beside it
            recipe = read_recipe(path)
            return AdapterInfo(name, path, COMBINATION, "COMPOSITION", recipe.base_model, recipe.task_type)
        files = read_adapter(path)
        metrics = dict((files.meta.get("card") or {}).get("metrics") or {})  # what the trainer recorded
        return AdapterInfo(
            name,
            path,
            files.method.name,
            files.method.peft_type,
            str(files.peft_config.get("base_model_name_or_path", "")),
            str(files.peft_config.get("task_type", "")),
            metrics,
        )

    def list(self) -> list[AdapterInfo]:
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and ((p / "adapter_config.json").exists() or is_recipe(p)):
                try:
                    out.append(self.info(p.name))
                except Exception:  # noqa: BLE001 - one broken folder must not hide the others
                    continue
        return out

    def remove(self, name: str) -> None:
        """Take ``name`` out of the store: renamed to a hidden folder first (one atomic step, after which the name is
        free and ``list`` skips it), then deleted, so an interrupted removal never leaves half an adapter."""
        path = self._path(name)
        if not path.is_dir():
            raise AdapterError(f"the store ({self.root}) has no adapter named {name!r}")
        trash = self.root / f".{name}.removed-{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

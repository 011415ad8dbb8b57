"""The app's adapter pickers, in one place: trained runs (``RUNS/*/adapter``, newest first), then the local adapter
store when ``peftlab-hub`` is installed (core never needs it), as ``(label, folder)`` dropdown choices."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from .. import jobs
from ..io import RUN_ADAPTER_DIR

HAS_HUB = find_spec("peftlab_hub") is not None


def store_adapters(store_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(label, folder)`` of every adapter in the local store (``store_dir``, default ``PEFTLAB_STORE`` or
    ``~/.cache/peftlab/adapters``), by name; ``[]`` without ``peftlab-hub``."""
    if not HAS_HUB:
        return []
    from peftlab_hub import AdapterStore

    return [(f"{info.name} ({info.method}, store)", info.path) for info in AdapterStore(store_dir).list()]


def adapter_choices(
    runs_dir: str | os.PathLike, store_dir: str | os.PathLike | None = None, owners: Sequence[str | None] = (None,)
) -> list[tuple[str, str]]:
    """Dropdown choices: the runs' adapters ``owners`` may see (``jobs.saved_adapters``; ``None``: every run's),
    newest first, then the store's; each value is the adapter folder."""
    runs = {path: label for o in owners for label, path in jobs.saved_adapters(runs_dir, o)}
    found = [*((runs[p], p) for p in sorted(runs, key=lambda p: (p.stat().st_mtime, p.name), reverse=True))]
    return [(label, str(path)) for label, path in [*found, *store_adapters(store_dir)]]


def adapter_label(path: str | os.PathLike) -> str:
    """A short name for an adapter folder: its run's name for ``RUN/adapter``, else the folder's own name."""
    p = Path(path)
    return p.parent.name if p.name == RUN_ADAPTER_DIR else p.name


def viewer(browser: str | None, profile=None) -> list[str]:
    """Whose runs a page shows: the Hugging Face login's (``hf:<user>``) and this browser's (trained before signing
    in), or the browser's alone."""
    user = getattr(profile, "username", None) if profile is not None else None
    owners = [f"hf:{user}"] if user else []
    return [*owners, browser or ""] if browser or not owners else owners


def locate(text: str, store_dir: str | os.PathLike | None = None) -> str:
    """What a typed adapter names, as a folder: a folder as is; with ``peftlab-hub``, also a store name or a Hub id
    (``owner/name[@rev]``, downloaded to the Hub cache and checked by the adapter doctor once per app process, since
    chat asks again with every message)."""
    if not HAS_HUB or Path(text).expanduser().is_dir():
        return text
    from peftlab_hub import AdapterStore

    store = AdapterStore(store_dir)
    if "/" not in text:  # a store name (or nothing: resolve_adapter says so)
        return _resolve(text, str(store.root))
    return _resolve_hub(text, str(store.root))


def _resolve(text: str, store_root: str) -> str:
    from peftlab_hub import AdapterStore, resolve_adapter

    return str(resolve_adapter(text, store=AdapterStore(store_root)).path)


@functools.lru_cache(maxsize=32)
def _resolve_hub(text: str, store_root: str) -> str:  # a failure is not cached: the next message tries again
    return _resolve(text, store_root)


__all__ = ["HAS_HUB", "adapter_choices", "adapter_label", "locate", "store_adapters", "viewer"]

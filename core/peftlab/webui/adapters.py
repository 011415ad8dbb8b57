"""The app's adapter pickers, in one place: trained runs (``RUNS/*/adapter``, newest first), then the local adapter
store when ``peftlab-hub`` is installed (core never needs it), as ``(label, folder)`` dropdown choices; and what a page
may open (``open_adapter``): when owners are kept apart, only its own runs' adapters and the store's, and a Hub id with
the visitor's own token, never this server's."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from .. import compare, jobs
from ..errors import PeftlabError
from ..io import RUN_ADAPTER_DIR
from .owners import viewer

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


def kept_apart() -> bool:
    """Whether this server keeps its sessions apart (``PEFTLAB_SHARE_JOBS`` unset or 0: a Space, a network address):
    then a page opens only its own runs' adapters, and never borrows the server's Hugging Face token."""
    return not jobs.shared_jobs()


def folder_owner(run_dir: Path) -> str | None:
    """Who started the run (``job.json``) or comparison (``compare-job.json``) in ``run_dir``; None: nobody (the
    CLI's, a composition of old)."""
    for name in (jobs.JOB_FILE, compare.JOB_FILE):
        try:
            return json.loads((run_dir / name).read_text()).get("owner")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    return None


def check_folder(
    text: str, runs_dir: str | os.PathLike, owners: Sequence[str | None], store_dir: str | os.PathLike | None = None
) -> None:
    """Refuse (``PeftlabError``) an adapter folder ``owners`` may not open when sessions are kept apart: one inside
    ``runs_dir`` of a run they cannot see (``jobs.visible``), or one outside both ``runs_dir`` and the local store.
    Text that is no folder (a store name, a Hub id) is left to ``locate``; ``None`` among ``owners`` (the API) and a
    server that shares its sessions may open any folder."""
    path = Path(text).expanduser()
    if not kept_apart() or None in owners or not path.is_dir():
        return
    real, runs = path.resolve(), Path(runs_dir).resolve()
    if real.is_relative_to(runs):
        parts = real.relative_to(runs).parts
        if parts and not parts[0].startswith(".") and folder_owner(runs / parts[0]) in (None, *owners):
            return
        raise PeftlabError(f"{text} is not an adapter of this session's runs")
    if HAS_HUB:
        from peftlab_hub import AdapterStore

        if real.is_relative_to(AdapterStore(store_dir).root.resolve()):
            return
    where = "this session's runs" + (" and the local adapter store" if HAS_HUB else "")
    raise PeftlabError(f"{text}: only the adapters of {where} can be opened on this server")


def open_adapter(
    text: str,
    runs_dir: str | os.PathLike,
    owners: Sequence[str | None],
    token: str | None = None,
    store_dir: str | os.PathLike | None = None,
) -> str:
    """What a page asks to open (a picked or typed adapter) as a folder, if ``owners`` may: ``check_folder``, then
    ``locate`` with the visitor's ``token``."""
    check_folder(text, runs_dir, owners, store_dir)
    return locate(text, store_dir, token)


def locate(text: str, store_dir: str | os.PathLike | None = None, token: str | None = None) -> str:
    """What a typed adapter names, as a folder: a folder as is; with ``peftlab-hub``, also a store name or a Hub id
    (``owner/name[@rev]``, downloaded to the Hub cache with ``token`` and checked by the adapter doctor once per app
    process and token, since chat asks again with every message). When sessions are kept apart, a visitor without
    a ``token`` fetches anonymously (public repos only), never with this server's token."""
    if not HAS_HUB or Path(text).expanduser().is_dir():
        return text
    from peftlab_hub import AdapterStore

    store = AdapterStore(store_dir)
    if "/" not in text:  # a store name (or nothing: resolve_adapter says so)
        return _resolve(text, str(store.root))
    return _resolve_hub(text, str(store.root), token)


def _resolve(text: str, store_root: str, token: str | Literal[False] | None = None) -> str:
    from peftlab_hub import AdapterStore, resolve_adapter

    return str(resolve_adapter(text, store=AdapterStore(store_root), token=token).path)


_hub_found: dict[tuple[str, str, str], str] = {}  # (Hub id, store, token digest) → folder; never the token itself
_hub_lock = threading.Lock()
HUB_CACHE_SIZE = 32


def _resolve_hub(text: str, store_root: str, token: str | None) -> str:  # a failure is not cached: tried again
    sent: str | Literal[False] | None = token or (False if kept_apart() else None)  # False: anonymous
    key = (text, store_root, hashlib.sha256(token.encode()).hexdigest() if token else str(sent))
    with _hub_lock:
        found = _hub_found.get(key)
    if found is None:
        found = _resolve(text, store_root, sent)
        with _hub_lock:
            _hub_found[key] = found
            while len(_hub_found) > HUB_CACHE_SIZE:
                _hub_found.pop(next(iter(_hub_found)))
    return found


__all__ = [
    "HAS_HUB",
    "adapter_choices",
    "adapter_label",
    "check_folder",
    "folder_owner",
    "kept_apart",
    "locate",
    "open_adapter",
    "store_adapters",
    "viewer",
]

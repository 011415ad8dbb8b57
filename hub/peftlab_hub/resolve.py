"""What an adapter argument names — a folder, a local store name, or a Hub id (``owner/name[@rev]``) — as a
checked local folder plus where it came from. The CLI and the app call this wherever they take an adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from peftlab import AdapterError
from peftlab.recipe import is_recipe

from .remote import looks_like_hub_id, parse_ref
from .store import AdapterStore


@dataclass
class ResolvedAdapter:
    path: Path
    source: str  # "folder" | "store" | "hub"
    provenance: dict = field(default_factory=dict)  # for a Hub adapter: repo_id, revision, sha, endpoint

    def describe(self) -> str:
        """One line for logs and the app: the folder, or ``owner/name@<sha>``."""
        p = self.provenance
        if p.get("repo_id"):
            rev = f" ({p['revision']})" if p.get("revision") else ""
            return f"{p['repo_id']}@{p['sha'][:12]}{rev}"
        return str(self.path)


def parent_inside(output: str | os.PathLike, parents: list, resolved: list[ResolvedAdapter]) -> str | None:
    """A line naming the first parent whose folder is ``output`` or lies inside it (``None`` when none does): writing
    ``output`` replaces the whole folder, so that parent would be deleted (a pulled recipe's ``parents/0``, say)."""
    out = Path(output).expanduser().resolve()
    for arg, r in zip(parents, resolved, strict=True):
        folder = Path(r.path).resolve()
        if folder == out or out in folder.parents:
            return (
                f"parent {arg} ({folder}) lies inside the output folder {out}, which is replaced whole: it would be "
                "deleted. Write to another folder (or copy the parents out first)"
            )
    return None


def resolve_adapter(
    arg: str | os.PathLike,
    *,
    store: AdapterStore | None = None,
    token: str | None = None,
    base: str | None = None,
    check: bool = True,
) -> ResolvedAdapter:
    """A folder wins, then a name in the local store, then a Hub id (downloaded to the Hub cache; nothing is added
    to the store). With ``check`` the doctor examines it (against ``base`` when given) before anything loads it."""
    from .doctor import check as doctor_check
    from .pull import provenance, pull

    text = str(arg)
    store = store or AdapterStore()
    local = Path(text).expanduser()
    if local.is_dir() or ("/" not in text and (store.root / text).is_dir()):
        path, source = (local, "folder") if local.is_dir() else (store.root / text, "store")
        if check and not is_recipe(path):  # a recipe's parents are checked (sha256) when it loads
            doctor_check(path, base)
        return ResolvedAdapter(path, source, provenance(path))
    if looks_like_hub_id(text):
        parse_ref(text)  # a clear error for a malformed id
        result = pull(text, base=base, token=token, keep_in_cache=True, check_first=check)
        return ResolvedAdapter(result.path, "hub", result.provenance)
    raise AdapterError(
        f"no adapter {text!r}: not a folder, not in the local store ({store.root}), and not a Hub "
        "id (owner/name[@revision])"
    )

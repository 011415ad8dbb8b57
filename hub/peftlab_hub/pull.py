"""Pull an adapter from the Hugging Face Hub: only its files, through ``huggingface_hub``'s cache, checked by the
doctor before it is copied anywhere; the commit it resolved to is recorded beside it (``provenance.json``)."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.io import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE, atomic_dir, check_replaceable, holds_adapter
from peftlab.recipe import RECIPE_FILE, is_recipe, read_recipe, resolve_parents

from .push import ADAPTER_FILES
from .remote import HubError, HubRef, client, endpoint, hub_errors, parse_ref, resolve_token
from .store import AdapterStore

PROVENANCE_FILE = "provenance.json"  # where a pulled adapter came from: repo, revision asked, commit sha
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a full commit sha: what recipes pin their Hub parents to
MAX_MB_ENV = "PEFTLAB_MAX_ADAPTER_MB"
DEFAULT_MAX_MB = 2048  # what a pull downloads at most (an adapter is far smaller: a repo this big holds something else)


@dataclass
class PullResult:
    path: Path  # the checked adapter folder: the store's copy, DIR, or the Hub cache's snapshot
    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    sha: str  # the commit it resolved to
    report: Any = None  # the doctor's report
    provenance: dict = field(default_factory=dict)
    replaced: str | None = None  # what a pull into the store replaced (an entry of that name), in words

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha": self.sha,
            "checks": self.report.to_json() if self.report is not None else None,
            "replaced": self.replaced,
        }


def download(ref: HubRef | str, *, token: str | None = None) -> tuple[Path, str]:
    """``(snapshot folder in the Hub cache, commit sha)`` of the adapter files at ``ref``; refuses a repo that holds
    no adapter, or only pickled weights, before downloading anything. A commit sha (40 hex digits) already in the
    cache is taken from there without asking the Hub, so pinned adapters and recipes load offline."""
    from huggingface_hub import snapshot_download

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    token = resolve_token(token)
    cached = _cached(ref, token) if ref.revision and COMMIT.match(ref.revision) else None
    if cached is not None:
        return cached, ref.revision
    doing = f"pulling {ref}"
    with hub_errors(doing, token, repo=ref.repo_id, revision=ref.revision):
        info = client(token).model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
        names = {s.rfilename for s in info.siblings or []}
        recipe = RECIPE_FILE in names and CONFIG_FILE not in names  # a composition recipe: no tensors of its own
        wanted = [RECIPE_FILE, "README.md"] if recipe else list(ADAPTER_FILES)
        _check_size(doing, {s.rfilename: _size(s) for s in info.siblings or [] if s.rfilename in wanted})
        if not recipe and CONFIG_FILE not in names:
            raise HubError(
                f"{doing}: {ref.repo_id} holds no adapter ({CONFIG_FILE} is missing; files: "
                f"{', '.join(sorted(names)[:8]) or 'none'})"
            )
        if not recipe and WEIGHTS_FILE not in names:
            pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
            if pickles:
                raise HubError(
                    f"{doing}: {ref.repo_id} holds only pickle weights ({', '.join(pickles)}); peftlab "
                    f"never unpickles, since a pickle can run code. Ask its author for {WEIGHTS_FILE}."
                )
            raise HubError(f"{doing}: {ref.repo_id} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        folder = snapshot_download(
            ref.repo_id,
            revision=info.sha,
            allow_patterns=wanted,
            token=token or False,
            endpoint=endpoint(),
        )
    return Path(folder), info.sha


def max_download_mb() -> float:
    """The most megabytes a pull downloads: ``PEFTLAB_MAX_ADAPTER_MB``, else ``DEFAULT_MAX_MB``."""
    raw = os.environ.get(MAX_MB_ENV, "").strip()
    if not raw:
        return float(DEFAULT_MAX_MB)
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not (mb > 0 and mb != float("inf")):
        raise HubError(f"{MAX_MB_ENV}={raw!r} is not a positive number of megabytes")
    return mb


def _size(sibling) -> int:
    """A file's size as the Hub lists it (an LFS file's real size, not its pointer's); 0 when not listed."""
    lfs = getattr(sibling, "lfs", None)
    size = (lfs.get("size") if isinstance(lfs, dict) else getattr(lfs, "size", None)) if lfs else None
    return int(size if size is not None else sibling.size or 0)


def _check_size(doing: str, sizes: dict[str, int]) -> None:
    """Refuse, before anything is downloaded, files larger in all than ``max_download_mb``."""
    cap = max_download_mb()
    total = sum(sizes.values())
    if total > cap * 2**20:
        biggest = max(sizes, key=sizes.__getitem__)
        raise HubError(
            f"{doing}: its files are {total / 2**20:.1f} MB ({biggest}: {sizes[biggest] / 2**20:.1f} MB), more than "
            f"the {cap:g} MB a pull downloads; set {MAX_MB_ENV} higher to pull it anyway"
        )


def _cached(ref: HubRef, token: str | None) -> Path | None:
    """The cache's snapshot of commit ``ref.revision`` when it holds an adapter (config and safetensors weights) or a
    recipe, else ``None`` (then the Hub is asked). A commit never changes, so the cache's copy is the Hub's."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                ref.repo_id,
                revision=ref.revision,
                allow_patterns=[RECIPE_FILE, *ADAPTER_FILES],
                token=token or False,
                endpoint=endpoint(),
                local_files_only=True,
            )
        )
    except Exception:  # noqa: BLE001 - not cached, or cached in part: the Hub decides
        return None
    if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return folder
    if (folder / RECIPE_FILE).is_file() and not (folder / CONFIG_FILE).exists():
        return folder
    return None


def pull(
    ref: str,
    *,
    revision: str | None = None,
    output: str | os.PathLike | None = None,
    store: AdapterStore | None = None,
    name: str | None = None,
    base: str | None = None,
    token: str | None = None,
    keep_in_cache: bool = False,
    check_first: bool = True,
) -> PullResult:
    """Download the adapter ``ref`` (``owner/name[@rev]``), check it with the doctor (against ``base`` when given),
    then copy it into ``output`` or the local store (as ``name``, default ``owner--name``) — atomically, so what
    was there survives any failure. ``keep_in_cache=True`` copies nothing and returns the cache's snapshot;
    ``check_first=False`` skips the doctor (for the doctor itself)."""
    from .doctor import check

    parsed = parse_ref(ref, revision)
    if output is not None and not keep_in_cache:
        _check_output(output)  # before anything is downloaded
    snapshot, sha = download(parsed, token=token)
    if is_recipe(snapshot):
        return _pull_recipe(parsed, snapshot, sha, output, store, name, base, token, keep_in_cache, check_first)
    report = check(snapshot, base) if check_first else None
    provenance = {"repo_id": parsed.repo_id, "revision": parsed.revision, "sha": sha, "endpoint": endpoint()}
    if keep_in_cache:
        return PullResult(snapshot, parsed.repo_id, parsed.revision, sha, report, provenance)

    def write(tmp: Path) -> None:
        for f in snapshot.iterdir():
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)  # follows the cache's symlinks to the blobs
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    if output is not None:
        path, replaced = atomic_dir(_check_output(output), write), None
    else:
        path, replaced = _into_store(store, name, parsed, write)
    return PullResult(path, parsed.repo_id, parsed.revision, sha, report, provenance, replaced)


def _into_store(store: AdapterStore | None, name: str | None, parsed: HubRef, write) -> tuple[Path, str | None]:
    """Write the pulled folder into the store as ``name`` (default ``owner--name``); returns its path and, when an
    entry of that name was there (replaced whole: recipes naming it by store name now get the new one), a line saying
    what it held."""
    store = store or AdapterStore()
    name = name or parsed.repo_id.replace("/", "--")
    old = store.root / name
    before = (provenance(old) or {"repo_id": "a local adapter"}) if old.is_dir() else None
    path = store.add_with(name, write, overwrite=True).path
    if before is None:
        return path, None
    was = before.get("repo_id") + (f"@{before['sha'][:12]}" if before.get("sha") else "")
    return path, f"replaced {name!r} in the store ({store.root}), which held {was}"


def _pull_recipe(
    parsed: HubRef,
    snapshot: Path,
    sha: str,
    output: str | os.PathLike | None,
    store: AdapterStore | None,
    name: str | None,
    base: str | None,
    token: str | None,
    keep_in_cache: bool,
    check_first: bool,
) -> PullResult:
    """A recipe pulls its parents: each at its pinned commit, checked by the doctor (``check_first``) and against the
    sha256 the recipe recorded. Into a folder or the store, the parents are copied beside the recipe
    (``parents/<i>/``), so it loads offline; ``keep_in_cache`` leaves them in the Hub cache."""
    from .doctor import check

    recipe = read_recipe(snapshot)
    provenance = {"repo_id": parsed.repo_id, "revision": parsed.revision, "sha": sha, "endpoint": endpoint()}
    local = [p.ref for p in recipe.parents if p.source != "hub"]
    if local:
        raise HubError(f"pulling {parsed}: the recipe names parents that are not on the Hub ({', '.join(local)})")
    folders = []
    for p in recipe.parents:
        folder, _ = download(parse_ref(p.repo_id, p.sha), token=token)  # a checked repo id
        if is_recipe(folder):  # not pulled in turn: a recipe's parents are adapters
            raise HubError(f"pulling {parsed}: its parent {p.repo_id}@{p.sha[:12]} is itself a recipe")
        if check_first:
            check(folder, base)
        folders.append(folder)
    resolve_parents(recipe, token=token)  # every parent as recorded (sha256)
    if keep_in_cache:
        return PullResult(snapshot, parsed.repo_id, parsed.revision, sha, None, provenance)
    data = json.loads((snapshot / RECIPE_FILE).read_text())
    for i, rec in enumerate(data["parents"]):
        rec["path"] = f"parents/{i}"  # the local copy; the Hub id and commit stay recorded

    def write(tmp: Path) -> None:
        for i, folder in enumerate(folders):
            (tmp / "parents" / str(i)).mkdir(parents=True)
            for f in folder.iterdir():
                if f.is_file():
                    shutil.copyfile(f, tmp / "parents" / str(i) / f.name)
            prov = {"repo_id": data["parents"][i]["repo_id"], "sha": data["parents"][i]["sha"], "endpoint": endpoint()}
            (tmp / "parents" / str(i) / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2) + "\n")
        for f in snapshot.iterdir():
            if f.is_file() and f.name != RECIPE_FILE:
                shutil.copyfile(f, tmp / f.name)
        (tmp / RECIPE_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    if output is not None:
        path, replaced = atomic_dir(_check_output(output), write), None
    else:
        path, replaced = _into_store(store, name, parsed, write)
    return PullResult(path, parsed.repo_id, parsed.revision, sha, None, provenance, replaced)


def _check_output(output: str | os.PathLike) -> Path:
    """``output`` if a pulled adapter or recipe may go there: a new or empty folder, or one holding an adapter or a
    recipe (replaced whole, as a pull into the store replaces its entry); ``atomic_dir`` swaps the whole folder, so a
    folder of other files would lose them."""
    return check_replaceable(
        output, lambda p: holds_adapter(p) or is_recipe(p), "adapter or composition recipe", "the pulled adapter"
    )


def provenance(folder: str | os.PathLike) -> dict:
    """Where a pulled adapter came from (``{}`` for one that was not pulled)."""
    f = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}

"""Pull an adapter from the Hugging Face Hub: only its files, through ``huggingface_hub``'s cache, checked by the
doctor before it is copied anywhere; the commit it resolved to is recorded beside it (``provenance.json``)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.io import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE, atomic_dir

from .push import ADAPTER_FILES
from .remote import HubError, HubRef, client, endpoint, hub_errors, parse_ref, resolve_token
from .store import AdapterStore

PROVENANCE_FILE = "provenance.json"  # where a pulled adapter came from: repo, revision asked, commit sha


@dataclass
class PullResult:
    path: Path  # the checked adapter folder: the store's copy, DIR, or the Hub cache's snapshot
    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    sha: str  # the commit it resolved to
    report: Any = None  # the doctor's report
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "sha": self.sha,
            "checks": self.report.to_json() if self.report is not None else None,
        }


def download(ref: HubRef | str, *, token: str | None = None) -> tuple[Path, str]:
    """``(snapshot folder in the Hub cache, commit sha)`` of the adapter files at ``ref``; refuses a repo that holds
    no adapter, or only pickled weights, before downloading anything."""
    from huggingface_hub import snapshot_download

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    token = resolve_token(token)
    doing = f"pulling {ref}"
    with hub_errors(doing, token, repo=ref.repo_id, revision=ref.revision):
        info = client(token).model_info(ref.repo_id, revision=ref.revision)
        names = {s.rfilename for s in info.siblings or []}
        if CONFIG_FILE not in names:
            raise HubError(
                f"{doing}: {ref.repo_id} holds no adapter ({CONFIG_FILE} is missing; files: "
                f"{', '.join(sorted(names)[:8]) or 'none'})"
            )
        if WEIGHTS_FILE not in names:
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
            allow_patterns=list(ADAPTER_FILES),
            token=token or False,
            endpoint=endpoint(),
        )
    return Path(folder), info.sha


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
    snapshot, sha = download(parsed, token=token)
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
        path = atomic_dir(Path(output), write)
    else:
        store = store or AdapterStore()
        path = store.add_with(name or parsed.repo_id.replace("/", "--"), write, overwrite=True).path
    return PullResult(path, parsed.repo_id, parsed.revision, sha, report, provenance)


def provenance(folder: str | os.PathLike) -> dict:
    """Where a pulled adapter came from (``{}`` for one that was not pulled)."""
    f = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}

"""Push an adapter folder to the Hugging Face Hub: the PEFT files and a model card, in one commit."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from peftlab import read_adapter
from peftlab.io import CONFIG_FILE, EXTRA_FILE, META_FILE, WEIGHTS_FILE
from peftlab.recipe import RECIPE_FILE, is_recipe, read_recipe, resolve_parents

from .remote import HubError, check_repo_id, client, endpoint, hub_errors, require_write_token

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE, EXTRA_FILE)  # what a pushed (and pulled) adapter holds


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit_sha: str
    commit_url: str
    url: str

    def to_json(self) -> dict:
        return asdict(self)


def push(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    message: str | None = None,
    token: str | None = None,
    license: str | None = None,
) -> PushResult:
    """Upload the adapter in ``adapter_dir`` to ``repo_id`` (created when missing) as one commit on ``revision``
    (a branch, created from main when missing; default main), with a model card. Checks the folder and the token
    before anything is sent. A composition recipe goes up as its ``composition.json`` and a card linking each parent
    at its pinned commit; its parents must be on the Hub already (``hub_recipe``). ``peftlab.json`` goes up as
    ``card.public_meta`` makes it (no token, no local path); the local files are never changed. A base recorded as a
    local folder is warned about (``UserWarning``): those who pull the adapter cannot load the base from it."""
    from huggingface_hub import CommitOperationAdd

    from .card import build_card, is_local_base, public_meta

    repo_id = check_repo_id(repo_id)
    if is_recipe(adapter_dir):
        return _push_recipe(Path(adapter_dir), repo_id, revision, private, message, token)
    files = read_adapter(adapter_dir)  # a complete, loadable adapter (a training run's folder resolves to adapter/)
    folder = Path(files.path)
    card = build_card(folder, repo_id=repo_id, license=license)
    token = require_write_token(token)
    api = client(token)
    base = files.peft_config.get("base_model_name_or_path")
    if is_local_base(base):
        warnings.warn(
            f"the adapter's base model is the local folder {base} (base_model_name_or_path in {CONFIG_FILE}, which "
            "goes up as it is): those who pull it cannot load the base from that path; say in the repo which model "
            "it is, or train from the base's Hub id",
            UserWarning,
            stacklevel=2,
        )
    ops = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
        for name in ADAPTER_FILES
        if (folder / name).is_file() and name != META_FILE
    ]
    if (folder / META_FILE).is_file():  # a cleaned copy (read_adapter parsed it): local paths and tokens stay here
        ops.append(CommitOperationAdd(path_in_repo=META_FILE, path_or_fileobj=_json_bytes(public_meta(files.meta))))
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.text.encode()))
    ops += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in card.files.items()]
    branch = revision or "main"
    with hub_errors(f"pushing to {repo_id}", token, repo=repo_id, revision=branch):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(
            repo_id, ops, revision=branch, commit_message=message or f"Upload {files.method.name} adapter with peftlab"
        )
    if not info.oid:
        raise HubError(f"pushing to {repo_id}: the Hub did not return a commit")
    return PushResult(repo_id, branch, info.oid, info.commit_url, f"{endpoint()}/{repo_id}")


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode()


def hub_recipe(folder: Path) -> dict:
    """``composition.json`` of the recipe in ``folder`` as it goes to the Hub: every parent by its Hub id at its pinned
    commit (local paths dropped). A parent that is only local is refused (push it first), and every parent is checked
    against its recorded sha256 (a changed one is refused) before anything is sent. Its other entries go up as
    ``card.public_json`` makes them (no token, no local path)."""
    from .card import public_json

    recipe = read_recipe(folder)
    local = [p.ref for p in recipe.parents if not (p.repo_id and p.sha)]
    if local:
        raise HubError(
            f"recipe {folder} has parent(s) that are only on this machine ({', '.join(local)}): push each first "
            "(peftlab push PARENT owner/name), then make the recipe again from their Hub ids (peftlab compose "
            "--stack owner/name ... --output DIR), so that everyone who pulls it can get every parent"
        )
    resolve_parents(recipe)  # each parent is there and unchanged (a Hub one is fetched at its pinned commit)
    parents = []
    for p in recipe.parents:
        keep = {"ref": p.repo_id, "source": "hub", "repo_id": p.repo_id, "sha": p.sha}
        pinned = {k: getattr(p, k) for k in ("weights_sha256", "config_sha256", "extra_sha256") if getattr(p, k)}
        parents.append({**keep, "method": p.method, "adapter_name": p.adapter_name, **pinned})
    return {**public_json(recipe.data), "parents": parents}


def _push_recipe(
    folder: Path, repo_id: str, revision: str | None, private: bool, message: str | None, token: str | None
) -> PushResult:
    from huggingface_hub import CommitOperationAdd

    from .card import recipe_card

    data = hub_recipe(folder)
    data["name"] = data.get("name") or repo_id.split("/")[1]
    token = require_write_token(token)
    api = client(token)
    ops = [
        CommitOperationAdd(path_in_repo=RECIPE_FILE, path_or_fileobj=_json_bytes(data)),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=recipe_card(data, repo_id=repo_id).encode()),
    ]
    branch = revision or "main"
    with hub_errors(f"pushing to {repo_id}", token, repo=repo_id, revision=branch):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        n = len(data["parents"])
        info = api.create_commit(
            repo_id, ops, revision=branch, commit_message=message or f"Upload a stack of {n} adapters with peftlab"
        )
    if not info.oid:
        raise HubError(f"pushing to {repo_id}: the Hub did not return a commit")
    return PushResult(repo_id, branch, info.oid, info.commit_url, f"{endpoint()}/{repo_id}")

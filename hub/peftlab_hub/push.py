"""Push an adapter folder to the Hugging Face Hub: the PEFT files and a model card, in one commit."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from peftlab import read_adapter
from peftlab.io import CONFIG_FILE, EXTRA_FILE, META_FILE, WEIGHTS_FILE

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
    before anything is sent."""
    from huggingface_hub import CommitOperationAdd

    from .card import build_card

    repo_id = check_repo_id(repo_id)
    files = read_adapter(adapter_dir)  # a complete, loadable adapter (a training run's folder resolves to adapter/)
    folder = Path(files.path)
    card = build_card(folder, repo_id=repo_id, license=license)
    token = require_write_token(token)
    api = client(token)
    ops = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
        for name in ADAPTER_FILES
        if (folder / name).is_file()
    ]
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

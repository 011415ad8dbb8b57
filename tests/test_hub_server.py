"""The local Hub server (tests/hub_server.py) driven by the real huggingface_hub client: this proves the protocol."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, list_models, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from huggingface_hub.utils import get_session
from safetensors.torch import load_file, save_file

from tests.hub_server import ORG, OTHER_TOKEN, READ_TOKEN, USER

# the fixtures `hub` and `hub_env` (also registered by the root conftest; pytest registers a plugin once)
pytest_plugins = ["tests.hub_fixture"]

SHA = re.compile(r"[0-9a-f]{40}")
README = """---
library_name: peft
base_model: org/base
license: apache-2.0
tags:
- lora
datasets:
- capitals
---
# An adapter
"""


def adapter_folder(path, scale: float = 1.0, readme: str = README):
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(readme)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "base_model_name_or_path": "org/base"})
    )
    save_file({"lora_A": torch.arange(8.0).reshape(2, 4) * scale}, str(path / "adapter_model.safetensors"))
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "notes.txt").write_text(f"notes {scale}\n")
    return path


def test_whoami_and_tokens(hub_env):
    me = HfApi().whoami()
    assert me["name"] == USER and [o["name"] for o in me["orgs"]] == [ORG]
    assert me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_token").whoami()
    assert err.value.response.status_code == 401
    assert get_session().get(f"{hub_env.url}/api/whoami-v2").status_code == 401  # no token at all


def test_create_repo(hub_env):
    api = HfApi()
    url = api.create_repo(f"{USER}/a")
    assert url == f"{hub_env.url}/{USER}/a" and url.repo_id == f"{USER}/a"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(f"{USER}/a")
    assert err.value.response.status_code == 409 and err.value.response.json()["url"] == url
    assert api.create_repo(f"{USER}/a", exist_ok=True) == url
    assert api.create_repo("b").repo_id == f"{USER}/b"  # no namespace: the token's user
    assert api.create_repo(f"{ORG}/c").repo_id == f"{ORG}/c"  # an org the user is in
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("bob/d")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).create_repo(f"{USER}/e")
    assert err.value.response.status_code == 401
    # the initial commit, like the Hub's
    info = api.model_info(f"{USER}/a")
    assert SHA.fullmatch(info.sha) and [s.rfilename for s in info.siblings] == [".gitattributes"]
    with pytest.raises(HFValidationError):  # repo ids are validated client-side, the server never sees this
        api.create_repo(f"{USER}/bad--name")
    api.delete_repo(f"{USER}/a")
    assert not api.repo_exists(f"{USER}/a")
    # seeding a repo directly, for tests that need one (a base model, say)
    seeded = hub_env.add_repo(f"{ORG}/base", {"config.json": "{}"})
    assert api.model_info(f"{ORG}/base").sha == seeded and hub_env.files(f"{ORG}/base")["config.json"] == b"{}"


def test_upload_commits_history_and_card(hub_env, tmp_path):
    api, repo_id = HfApi(), f"{USER}/adapter"
    api.create_repo(repo_id)
    folder = adapter_folder(tmp_path / "v1")
    first = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="v1")
    assert SHA.fullmatch(first.oid) and first.commit_url == f"{hub_env.url}/{repo_id}/commit/{first.oid}"
    assert first.repo_url.repo_id == repo_id
    stored = hub_env.files(repo_id)
    assert stored["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert sorted(stored) == [
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/notes.txt",
    ]

    info = api.model_info(repo_id)
    assert info.sha == first.oid and info.library_name == "peft" and info.private is False
    assert sorted(s.rfilename for s in info.siblings) == sorted(stored)
    assert info.card_data.base_model == "org/base" and info.card_data.license == "apache-2.0"
    assert {
        "lora",
        "peft",
        "safetensors",
        "base_model:org/base",
        "base_model:adapter:org/base",
        "license:apache-2.0",
        "dataset:capitals",
    } <= set(info.tags)
    assert info.last_modified is not None and info.downloads == 0

    adapter_folder(folder, scale=2.0)  # changes the weights and the notes, README and config stay
    second = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="v2")
    assert second.oid != first.oid
    assert hub_env.repo(repo_id).commits[second.oid].parents == [first.oid]
    commits = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in commits][:2] == [second.oid, first.oid] and commits[0].title == "v2"
    assert [c.title for c in commits][-1] == "initial commit"
    # unchanged files are skipped by the client (preupload returned their blob oid): nothing new to commit
    third = api.upload_folder(repo_id=repo_id, folder_path=folder)
    assert third.oid == second.oid and len(api.list_repo_commits(repo_id)) == 3
    (entry,) = api.get_paths_info(repo_id, ["README.md"])  # a file's oid is git's blob sha
    readme = stored["README.md"]
    assert entry.blob_id == hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()
    api.delete_file("sub/notes.txt", repo_id)
    assert "sub/notes.txt" not in api.list_repo_files(repo_id)
    with pytest.raises(HfHubHTTPError) as err:  # stale parent commit
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, parent_commit=first.oid)
    assert err.value.response.status_code == 412
    with pytest.raises(ValueError, match="Invalid metadata"):  # validate-yaml
        api.upload_file(path_or_fileobj=b"---\n- [unclosed\n---\n", path_in_repo="README.md", repo_id=repo_id)


def test_tree(hub_env, tmp_path):
    api, repo_id = HfApi(), f"{USER}/tree"
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=adapter_folder(tmp_path / "a"))
    assert sorted(api.list_repo_files(repo_id)) == [
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "sub/notes.txt",
    ]
    top = list(api.list_repo_tree(repo_id))
    assert isinstance(top[0], RepoFolder) and top[0].path == "sub" and "sub/notes.txt" not in [e.path for e in top]
    (notes,) = api.list_repo_tree(repo_id, path_in_repo="sub")
    assert isinstance(notes, RepoFile) and notes.size == len(b"notes 1.0\n")
    expanded = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, expand=True)}
    assert set(expanded) >= {"sub", "sub/notes.txt"} and expanded["README.md"].last_commit.title
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="nope"))
    paths = api.get_paths_info(repo_id, ["README.md", "sub", "missing"])
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFile", "README.md"), ("RepoFolder", "sub")]


def test_download_branches_tags_refs(hub_env, tmp_path):
    api, repo_id = HfApi(), f"{USER}/dl"
    api.create_repo(repo_id)
    v1 = api.upload_folder(repo_id=repo_id, folder_path=adapter_folder(tmp_path / "v1")).oid
    api.create_tag(repo_id, tag="v1")
    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(repo_id, branch="dev")
    assert err.value.response.status_code == 409
    v2 = api.upload_folder(repo_id=repo_id, folder_path=adapter_folder(tmp_path / "v2", scale=2.0), revision="dev").oid
    assert hub_env.files(repo_id, "main")["sub/notes.txt"] == b"notes 1.0\n"  # main did not move
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": v1, "dev": v2}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", v1)]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(repo_id, tag="v1")
    assert err.value.response.status_code == 409

    def notes(revision):
        return open(hf_hub_download(repo_id, "sub/notes.txt", revision=revision)).read()

    assert notes(None) == notes("v1") == notes(v1) == "notes 1.0\n"
    assert notes("dev") == notes(v2) == "notes 2.0\n"
    path = hf_hub_download(repo_id, "adapter_model.safetensors", revision="dev")
    assert f"/snapshots/{v2}/" in path and load_file(path)["lora_A"][0, 1] == 2.0
    assert api.model_info(repo_id, revision="dev").sha == v2

    snap = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"], cache_dir=tmp_path / "cache")
    assert snap.endswith(v1)
    assert sorted(p.name for p in Path(snap).iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    snap = snapshot_download(repo_id, revision="dev", local_dir=tmp_path / "local")
    assert (tmp_path / "local" / "sub" / "notes.txt").read_text() == "notes 2.0\n"
    assert snapshot_download(repo_id, revision=v2, allow_patterns="README.md").endswith(v2)

    api.delete_branch(repo_id, branch="dev")
    api.delete_tag(repo_id, tag="v1")
    refs = api.list_repo_refs(repo_id)
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []
    # a pull request ref
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id=repo_id, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert open(hf_hub_download(repo_id, "pr.txt", revision="refs/pr/1")).read() == "pr"
    assert "pr.txt" not in api.list_repo_files(repo_id)


def test_list_models(hub_env, tmp_path):
    api = HfApi()
    for name, readme in [("ada", README), ("ada2", README.replace("org/base", "org/other"))]:
        api.create_repo(f"{USER}/{name}")
        api.upload_folder(repo_id=f"{USER}/{name}", folder_path=adapter_folder(tmp_path / name, readme=readme))
    api.create_repo(f"{USER}/full")  # a fine-tuned model: no adapter_config.json
    files = {"README.md": b"---\nbase_model: org/base\n---\n", "config.json": b"{}"}
    api.create_commit(f"{USER}/full", [CommitOperationAdd(p, d) for p, d in files.items()], commit_message="ft")
    api.create_repo(f"{ORG}/secret", private=True)
    api.upload_folder(repo_id=f"{ORG}/secret", folder_path=adapter_folder(tmp_path / "secret"))
    hub_env.set_stats(f"{USER}/ada2", downloads=5)

    found = list(api.list_models(filter="base_model:adapter:org/base"))
    assert sorted(m.id for m in found) == [f"{USER}/ada", f"{ORG}/secret"]
    assert found[0].library_name == "peft" and found[0].card_data is None
    anonymous = HfApi(token=False).list_models(filter="base_model:adapter:org/base")
    assert [m.id for m in anonymous] == [f"{USER}/ada"]  # private repos only for their owners
    assert list(list_models(filter="base_model:adapter:org/base", author=ORG))[0].id == f"{ORG}/secret"
    assert [m.id for m in api.list_models(filter=["peft", "base_model:org/base"], search="ad")] == [f"{USER}/ada"]
    (m,) = api.list_models(filter="base_model:finetune:org/base")
    assert m.id == f"{USER}/full" and m.library_name == "transformers"
    (m,) = api.list_models(filter="base_model:adapter:org/other", cardData=True)
    assert m.card_data.base_model == "org/other" and m.siblings is None
    (m,) = api.list_models(search="ada2", full=True)
    assert m.sha and len(m.siblings) == 5
    assert [m.id for m in api.list_models(sort="downloads", limit=1)] == [f"{USER}/ada2"]


def test_errors_and_private_repos(hub_env, tmp_path):
    api, repo_id = HfApi(), f"{USER}/err"
    api.create_repo(repo_id)
    head = api.upload_folder(repo_id=repo_id, folder_path=adapter_folder(tmp_path / "a")).oid
    for token, status in [(False, 401), (READ_TOKEN, 403), (OTHER_TOKEN, 403), ("hf_invalid", 401)]:
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(token=token).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
        assert err.value.response.status_code == status, token
        assert not isinstance(err.value, RepositoryNotFoundError)
    assert api.model_info(repo_id).sha == head and "x.txt" not in hub_env.files(repo_id)

    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{USER}/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/missing", "README.md")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "README.md", revision="nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt")
    assert api.file_exists(repo_id, "README.md") and not api.file_exists(repo_id, "nope.txt")
    assert api.revision_exists(repo_id, head[:10]) and not api.revision_exists(repo_id, "nope")

    private = f"{USER}/private"
    api.create_repo(private, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=private)
    assert api.model_info(private).private is True
    for token in (False, OTHER_TOKEN):
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(private, "s.txt", token=token)
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info(private)
        assert not HfApi(token=token).repo_exists(private)
    assert open(hf_hub_download(private, "s.txt")).read() == "secret"
    assert open(hf_hub_download(private, "s.txt", token=READ_TOKEN, force_download=True)).read() == "secret"
    api.update_repo_settings(private, private=False)
    assert HfApi(token=False).model_info(private).private is False


def test_dataset_repo(hub_env):
    api, repo_id = HfApi(), f"{USER}/data"
    url = api.create_repo(repo_id, repo_type="dataset")
    assert url == f"{hub_env.url}/datasets/{repo_id}" and url.repo_type == "dataset"
    commit = api.upload_file(
        path_or_fileobj=b'{"a": 1}\n', path_in_repo="train.jsonl", repo_id=repo_id, repo_type="dataset"
    )
    assert commit.commit_url == f"{hub_env.url}/datasets/{repo_id}/commit/{commit.oid}"
    assert open(hf_hub_download(repo_id, "train.jsonl", repo_type="dataset")).read() == '{"a": 1}\n'
    assert api.dataset_info(repo_id).sha == commit.oid
    with pytest.raises(RepositoryNotFoundError):  # same id, other type
        api.model_info(repo_id)
    api.delete_repo(repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(repo_id, repo_type="dataset")


def test_peft_push_to_hub_and_from_pretrained(hub_env):
    from peft import LoraConfig, PeftModel, get_peft_model

    from peftlab.models import tiny_model

    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        plain = tiny_model("llama")(ids).logits
    model = get_peft_model(
        tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        expected = model(ids).logits
    assert not torch.allclose(plain, expected)
    model.push_to_hub(f"{USER}/tiny-lora")
    assert "adapter_model.safetensors" in hub_env.files(f"{USER}/tiny-lora")
    loaded = PeftModel.from_pretrained(tiny_model("llama"), f"{USER}/tiny-lora")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected)

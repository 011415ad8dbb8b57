"""Composition recipes on the Hub (the local server): a recipe pushes with its parents linked at their pinned commits,
refuses to push parents that are only local, and pulls with its parents (into the store, loadable offline, and by
Hub id from the cache)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

import peftlab
from peftlab.adapters import set_weight
from peftlab.cli import main as cli
from peftlab.models import load_model
from peftlab.recipe import RECIPE_FILE, read_recipe
from peftlab.testing import randomize_adapter
from peftlab_hub import HubError, pull, push, resolve_adapter, stack
from tests.hub_fixture import BASE, serve_base

pytest_plugins = ["tests.hub_fixture"]


@pytest.fixture
def online(hub_env, tiny_dir, tmp_path, monkeypatch):
    serve_base(hub_env, tiny_dir)
    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))
    return hub_env


def _parents(tiny_dir, tmp_path):
    out = []
    for i, (method, cfg) in enumerate([("lora", {"r": 4}), ("prompt_tuning", {"num_virtual_tokens": 3})]):
        model, _ = load_model(str(tiny_dir))
        peftlab.add_adapter(model, method, cfg)
        randomize_adapter(model, std=0.3, seed=i)
        out.append(peftlab.save_adapter(model, tmp_path / method, base_model=BASE))
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 9, 23, 42, 7]])).logits


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_push_and_pull_a_recipe_with_its_parents(online, tiny_dir, tmp_path):
    from huggingface_hub import hf_hub_download

    lora, prompt = _parents(tiny_dir, tmp_path)
    local = stack([str(lora), str(prompt)], [0.5, 1.0], output=tmp_path / "local")
    with pytest.raises(HubError, match="only on this machine.*push each first"):
        push(local, "alice/my-stack")

    shas = [push(lora, "alice/lora-a").commit_sha, push(prompt, "alice/prompt-b").commit_sha]
    recipe = stack(["alice/lora-a", "alice/prompt-b"], [0.5, 1.0], output=tmp_path / "hub-stack")
    parents = read_recipe(recipe).parents
    assert [(p.source, p.repo_id, p.sha) for p in parents] == [
        ("hub", "alice/lora-a", shas[0]),
        ("hub", "alice/prompt-b", shas[1]),
    ]
    pushed = push(recipe, "alice/my-stack")
    card = open(hf_hub_download("alice/my-stack", "README.md", revision=pushed.commit_sha)).read()
    for repo, sha in zip(["alice/lora-a", "alice/prompt-b"], shas, strict=True):
        assert f"[{repo}@{sha[:12]}]({online.url}/{repo}/tree/{sha})" in card

    # the parents move on; the recipe stays pinned to the commits it was made from
    model, _ = load_model(str(tiny_dir))
    peftlab.add_adapter(model, "lora", {"r": 4})
    randomize_adapter(model, std=0.3, seed=42)
    push(peftlab.save_adapter(model, tmp_path / "lora2", base_model=BASE), "alice/lora-a")

    expected_model, _ = load_model(str(tiny_dir))
    peftlab.load_adapter(expected_model, lora, "a")
    peftlab.load_adapter(expected_model, prompt, "b")
    set_weight(expected_model, "a", 0.5)
    expected = _logits(expected_model)

    pulled = pull("alice/my-stack")  # into the store, with a copy of each parent beside the recipe
    assert (pulled.path / RECIPE_FILE).is_file() and (
        pulled.path / "parents" / "0" / "adapter_model.safetensors"
    ).is_file()
    model, _ = load_model(str(tiny_dir))
    assert peftlab.load_adapter(model, pulled.path) == "hub-stack"  # the name it was made with
    assert torch.equal(_logits(model), expected)

    by_id = resolve_adapter("alice/my-stack")  # a Hub id: the recipe from the cache, its parents at their commits
    model, _ = load_model(str(tiny_dir))
    peftlab.load_adapter(model, by_id.path)
    assert torch.equal(_logits(model), expected)

    code, out, err = _run(
        "generate", "--base", str(tiny_dir), "--adapter", "alice--my-stack", "--prompt", "hi", "--json"
    )
    assert code == 0, err
    assert isinstance(json.loads(out)["reply"], str)


def test_the_doctor_reaches_private_hub_parents_with_the_token_it_is_given(online, tiny_dir, tmp_path, monkeypatch):
    """``peftlab doctor RECIPE --token T``: the token reaches the recipe's Hub parents (private here), for their
    checks and for ``--load``; without it they are reported missing."""
    import os
    import shutil

    from peftlab_hub.doctor import diagnose
    from tests.hub_server import READ_TOKEN

    lora, prompt = _parents(tiny_dir, tmp_path)
    push(lora, "alice/private-lora", private=True)
    push(prompt, "alice/private-prompt", private=True)
    recipe = stack(["alice/private-lora", "alice/private-prompt"], [0.5, 1.0], output=tmp_path / "stack")
    shutil.rmtree(os.environ["HF_HUB_CACHE"], ignore_errors=True)  # nothing of the parents cached: fetched anew
    monkeypatch.delenv("HF_TOKEN")

    report = diagnose(recipe)
    assert not report.ok and report["parent 1"].ok is False and "alice/private-lora" in report["parent 1"].detail
    report = diagnose(recipe, token=READ_TOKEN, load_weights=True, base=str(tiny_dir))
    assert report.ok, report.format()
    assert report["parent 1"].ok is True and report["parent 2"].ok is True and report["load"].ok is True
    shutil.rmtree(os.environ["HF_HUB_CACHE"], ignore_errors=True)
    code, out, err = _run("doctor", str(recipe), "--token", READ_TOKEN, "--json")
    assert code == 0, out + err
    assert json.loads(out)["ok"] is True and READ_TOKEN not in out + err


def test_a_hub_recipe_whose_parent_is_a_recipe_is_refused(online, tiny_dir, tmp_path):
    """A recipe's parents are adapters: a Hub parent that is a recipe is refused by name, not pulled in turn."""
    lora, _ = _parents(tiny_dir, tmp_path)
    push(lora, "alice/lora-a")
    inner = push(stack(["alice/lora-a"], output=tmp_path / "inner"), "alice/inner").commit_sha
    data = json.loads((tmp_path / "inner" / RECIPE_FILE).read_text())
    data["parents"] = [
        {"ref": "alice/inner", "source": "hub", "repo_id": "alice/inner", "sha": inner, "method": "lora"}
        | {"adapter_name": "default", "weights_sha256": "0" * 64}
    ]
    online.add_repo("alice/outer", {RECIPE_FILE: json.dumps(data)})
    with pytest.raises(HubError, match=f"its parent alice/inner@{inner[:12]} is itself a recipe"):
        pull("alice/outer", output=tmp_path / "outer")
    assert not (tmp_path / "outer").exists()
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / RECIPE_FILE).write_text(json.dumps(data))
    with pytest.raises(peftlab.AdapterError, match="is itself a recipe"):
        peftlab.load_adapter(load_model(str(tiny_dir))[0], tmp_path / "local")


def test_a_pushed_recipe_pins_each_parents_config_too(online, tiny_dir, tmp_path):
    from huggingface_hub import hf_hub_download

    from peftlab.recipe import sha256_file

    lora, prompt = _parents(tiny_dir, tmp_path)
    push(lora, "alice/lora-a")
    push(prompt, "alice/prompt-b")
    recipe = stack(["alice/lora-a", "alice/prompt-b"], output=tmp_path / "hub-stack")
    pushed = push(recipe, "alice/my-stack")
    data = json.loads(open(hf_hub_download("alice/my-stack", RECIPE_FILE, revision=pushed.commit_sha)).read())
    assert [p["config_sha256"] for p in data["parents"]] == [
        sha256_file(lora / "adapter_config.json"),
        sha256_file(prompt / "adapter_config.json"),
    ]
    pulled = pull("alice/my-stack", output=tmp_path / "pulled")
    assert read_recipe(pulled.path).parents[0].config_sha256 == data["parents"][0]["config_sha256"]
    peftlab.load_adapter(load_model(str(tiny_dir))[0], pulled.path)


def test_a_recipe_pinned_to_hub_commits_loads_offline_from_the_cache(online, tiny_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    lora, prompt = _parents(tiny_dir, tmp_path)
    push(lora, "alice/lora-a")
    push(prompt, "alice/prompt-b")
    sha = push(stack(["alice/lora-a", "alice/prompt-b"], output=tmp_path / "s"), "alice/my-stack").commit_sha
    model, _ = load_model(str(tiny_dir))
    peftlab.load_adapter(model, resolve_adapter(f"alice/my-stack@{sha}").path)  # online: fills the cache
    expected = _logits(model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, _ = load_model(str(tiny_dir))
    peftlab.load_adapter(model, resolve_adapter(f"alice/my-stack@{sha}").path)
    assert torch.equal(_logits(model), expected)
    local = stack(["alice/lora-a@" + read_recipe(tmp_path / "s").parents[0].sha], output=tmp_path / "local")
    assert read_recipe(local).parents[0].repo_id == "alice/lora-a"  # a stack of a pinned Hub parent, offline

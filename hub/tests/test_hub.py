"""Push, pull, search and every adapter argument, with the real ``huggingface_hub`` client against the local Hub
server (tests/hub_server.py), on a tiny llama whose base model lives on that server as ``alice/tiny-llama``."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.cli import main as cli
from peftlab.models import load_model
from peftlab_hub import AdapterStore, HubError, compose, pull, push, resolve_adapter, search
from tests.hub_fixture import BASE, serve_base, train_tiny
from tests.hub_server import OTHER_TOKEN, READ_TOKEN, WRITE_TOKEN

pytest_plugins = ["tests.hub_fixture"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """A LoRA adapter trained for 3 steps on the tiny llama (its card records the Hub id of the base)."""
    return train_tiny(tmp_path_factory.mktemp("run") / "lora", tiny_dir)


@pytest.fixture
def online(hub_env, tiny_dir, tmp_path, monkeypatch):
    """The Hub server with the tiny base model on it, and a fresh local store."""
    serve_base(hub_env, tiny_dir)
    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))
    return hub_env


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli(list(argv))
    return code, out.getvalue(), err.getvalue()


def _logits(model, adapter: str | None = None) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    with torch.no_grad(), peftlab.active_adapters(model, adapter):
        return model(input_ids=ids).logits


# --- push ---------------------------------------------------------------------------------------------------


def test_push_makes_one_commit_with_the_adapter_and_its_card(online, trained):
    result = push(trained, "alice/capitals-lora", license="apache-2.0")
    files = online.files("alice/capitals-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "peftlab.json", "README.md", "loss_curve.png"} <= set(
        files
    )
    assert files["adapter_model.safetensors"] == (trained / "adapter_model.safetensors").read_bytes()
    assert files["loss_curve.png"].startswith(b"\x89PNG")
    card = files["README.md"].decode()
    assert "library_name: peft" in card and BASE in card and "license: apache-2.0" in card
    repo = online.repo("alice/capitals-lora")
    assert repo.branches["main"] == result.commit_sha and result.commit_sha in result.commit_url
    assert len(repo.history(result.commit_sha)) == 2  # the repo's first commit, then ours: one commit for all files
    again = push(trained, "alice/capitals-lora", message="second")
    assert again.commit_sha != result.commit_sha
    assert repo.commits[again.commit_sha].title == "second"


def test_push_uploads_a_cleaned_peftlab_json_and_leaves_the_local_files(online, trained, tiny_dir, tmp_path):
    """No local path or token-like text goes up in peftlab.json (the trainer records the base's folder, a dataset's
    path; compose the folders of its parents); the files on disk stay as they are."""
    folder = shutil.copytree(trained, tmp_path / "adapter")
    meta_file = folder / "peftlab.json"
    meta = json.loads(meta_file.read_text())
    assert meta["card"]["training"]["base_model"] == str(tiny_dir)  # what training recorded
    meta["card"]["dataset"] = "/home/jdoe/private/data.jsonl"
    meta["card"]["training"]["hub_token"] = "sekrit-value"
    meta["card"]["training"]["notes"] = "made with hf_ABCDEFGHIJKLMNOP"
    meta_file.write_text(json.dumps(meta))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    push(folder, "alice/clean")
    sent = online.files("alice/clean")["peftlab.json"].decode()
    for leak in (str(tiny_dir), "/home/jdoe", "sekrit", "hf_ABCD"):
        assert leak not in sent
    up = json.loads(sent)
    assert up["card"]["dataset"] == "./data.jsonl" and up["card"]["training"]["base_model"] == f"./{tiny_dir.name}"
    assert up["method"] == "lora" and up["base_model"] == BASE and up["card"]["metrics"] == meta["card"]["metrics"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    merged = compose([trained, folder], output=tmp_path / "merged")
    push(merged, "alice/merged")
    sent = online.files("alice/merged")["peftlab.json"].decode()
    assert str(tmp_path) not in sent and str(trained) not in sent
    parents = json.loads(sent)["composition"]["parents"]
    assert [p["arg"] for p in parents] == ["./adapter", "./adapter"]
    assert all("path" not in p and len(p["weights_sha256"]) == 64 for p in parents)
    assert json.loads((merged / "peftlab.json").read_text())["composition"]["parents"][1]["path"] == str(folder)


def test_push_warns_when_the_base_is_a_local_folder(online, trained, tiny_dir, tmp_path):
    folder = shutil.copytree(trained, tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tiny_dir)}))
    with pytest.warns(UserWarning, match="base model is the local folder .* cannot load the base from that path"):
        push(folder, "alice/local-base")
    code, _, err = _run("push", str(folder), "alice/local-base")
    assert code == 0 and "warning: the adapter's base model is the local folder" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        push(trained, "alice/hub-base")  # a Hub id: nothing to warn about


def test_push_to_a_branch_creates_it_and_leaves_main(online, trained):
    first = push(trained, "alice/branchy")
    on_dev = push(trained, "alice/branchy", revision="dev")
    repo = online.repo("alice/branchy")
    assert repo.branches["dev"] == on_dev.commit_sha and repo.branches["main"] == first.commit_sha


def test_push_without_a_token_or_with_a_read_only_one_fails_before_any_work(online, trained, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="needs a Hugging Face token: log in with `hf auth login`"):
        push(trained, "alice/nope")
    with pytest.raises(HubError, match="read-only"):
        push(trained, "alice/nope", token=READ_TOKEN)
    with pytest.raises(HubError, match="403"):
        push(trained, "alice/nope", token=OTHER_TOKEN)  # bob cannot write to alice's namespace
    assert ("model", "alice/nope") not in online.repos


@pytest.mark.parametrize("bad", ["alice/../x", "alice/has space", "a/b/c", "noslash"])
def test_push_refuses_a_bad_repo_id_naming_it(online, trained, bad):
    with pytest.raises(HubError, match="invalid Hub repo id"):
        push(trained, bad)


def test_push_refuses_a_folder_that_is_not_a_complete_adapter(online, trained, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(trained / "adapter_config.json", half)
    with pytest.raises(peftlab.AdapterError, match="adapter_model.safetensors is missing"):
        push(half, "alice/half")
    assert ("model", "alice/half") not in online.repos


# --- pull, and a Hub id wherever an adapter is taken ----------------------------------------------------------


def test_pull_checks_copies_into_the_store_and_records_the_commit(online, trained):
    pushed = push(trained, "alice/capitals-lora")
    result = pull("alice/capitals-lora")
    store = AdapterStore()
    assert result.path == store.root / "alice--capitals-lora" and result.sha == pushed.commit_sha
    assert json.loads((result.path / "provenance.json").read_text())["sha"] == pushed.commit_sha
    assert (result.path / "adapter_model.safetensors").read_bytes() == (
        trained / "adapter_model.safetensors"
    ).read_bytes()
    assert [i.name for i in store.list()] == ["alice--capitals-lora"]
    assert result.report.ok


def test_a_pull_that_replaces_a_store_entry_says_so(online, trained):
    first = push(trained, "alice/capitals-lora").commit_sha
    assert pull("alice/capitals-lora").replaced is None  # a new entry
    second = push(trained, "alice/capitals-lora", message="again").commit_sha
    result = pull("alice/capitals-lora")
    store = AdapterStore().root
    assert result.sha == second and result.replaced == (
        f"replaced 'alice--capitals-lora' in the store ({store}), which held alice/capitals-lora@{first[:12]}"
    )
    code, out, err = _run("pull", "alice/capitals-lora", "--json")
    assert code == 0 and "replaced 'alice--capitals-lora' in the store" in err
    assert json.loads(out)["replaced"].endswith(f"which held alice/capitals-lora@{second[:12]}")


def test_pull_at_a_branch_or_sha_and_bad_revisions(online, trained, tmp_path):
    first = push(trained, "alice/revs")
    push(trained, "alice/revs", revision="dev")
    assert pull("alice/revs@dev", output=tmp_path / "dev").sha == online.repo("alice/revs").branches["dev"]
    assert pull("alice/revs", revision=first.commit_sha, output=tmp_path / "old").sha == first.commit_sha
    with pytest.raises(HubError, match="has no revision 'nope'"):
        pull("alice/revs@nope", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_pull_refuses_an_output_folder_of_other_files_and_keeps_them(online, trained, tmp_path):
    push(trained, "alice/capitals-lora")
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(peftlab.ConfigError, match="Documents is not empty and holds no adapter.*delete its files"):
        pull("alice/capitals-lora", output=docs)
    code, _, err = _run("pull", "alice/capitals-lora", "--output", str(docs))
    assert code == 2 and "holds no adapter" in err
    assert [p.name for p in docs.iterdir()] == ["thesis.txt"] and (docs / "thesis.txt").read_text() == "years of work"
    first = pull("alice/capitals-lora", output=tmp_path / "pulled").path
    assert pull("alice/capitals-lora", output=first).path == first  # a pulled adapter's folder is replaced whole


def _offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_a_pinned_commit_in_the_cache_pulls_offline(online, trained, tmp_path, monkeypatch):
    sha = push(trained, "alice/pinned").commit_sha
    pull(f"alice/pinned@{sha}", output=tmp_path / "first")  # fills the Hub cache
    _offline(monkeypatch)
    assert resolve_adapter(f"alice/pinned@{sha}").provenance["sha"] == sha
    again = pull("alice/pinned", revision=sha, output=tmp_path / "again")
    assert (again.path / "adapter_model.safetensors").read_bytes() == (
        trained / "adapter_model.safetensors"
    ).read_bytes()
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):  # a branch moves: only the Hub can say where to
        pull("alice/pinned@main", output=tmp_path / "x")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):  # a commit that is not cached
        pull(f"alice/pinned@{'0' * 40}", output=tmp_path / "x")


def test_pull_refuses_files_over_the_size_cap_before_downloading_them(online, trained, tmp_path, monkeypatch):
    push(trained, "alice/big")
    monkeypatch.setenv("PEFTLAB_MAX_ADAPTER_MB", "0.001")
    with pytest.raises(HubError, match=r"its files are .* MB \(adapter_model.safetensors: .* MB\), more than the "):
        pull("alice/big", output=tmp_path / "x")
    code, _, err = _run("pull", "alice/big")
    assert code == 2 and "set PEFTLAB_MAX_ADAPTER_MB higher to pull it anyway" in err
    cached = Path(os.environ["HF_HUB_CACHE"]) / "models--alice--big"
    assert not (tmp_path / "x").exists() and not list(cached.rglob("*.safetensors"))  # nothing was downloaded
    monkeypatch.setenv("PEFTLAB_MAX_ADAPTER_MB", "lots")
    with pytest.raises(HubError, match="PEFTLAB_MAX_ADAPTER_MB='lots' is not a positive number of megabytes"):
        pull("alice/big", output=tmp_path / "x")
    monkeypatch.setenv("PEFTLAB_MAX_ADAPTER_MB", "64")
    assert pull("alice/big", output=tmp_path / "x").report.ok


def test_pull_refuses_repos_without_a_safe_adapter_and_keeps_the_store(online, trained):
    store = AdapterStore()
    store.add(trained, "keep")
    before = sorted(p.name for p in store.root.rglob("*"))
    online.add_repo("alice/readme-only", {"README.md": "# nothing here"})
    with pytest.raises(HubError, match="holds no adapter"):
        pull("alice/readme-only")
    online.add_repo(
        "alice/pickled",
        {"adapter_config.json": (trained / "adapter_config.json").read_text(), "adapter_model.bin": b"\x80\x04pickle"},
    )
    with pytest.raises(HubError, match=r"only pickle weights \(adapter_model.bin\); peftlab never unpickles"):
        pull("alice/pickled")
    with pytest.raises(HubError, match="not found"):
        pull("alice/missing")
    assert sorted(p.name for p in store.root.rglob("*")) == before


def test_a_private_repo_needs_a_token(online, trained, monkeypatch):
    push(trained, "alice/secret", private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="not found .*if it is private: log in"):
        pull("alice/secret")
    assert pull("alice/secret", token=READ_TOKEN).repo_id == "alice/secret"


def test_token_false_is_anonymous_whatever_this_machine_holds(online, trained, tmp_path):
    """``token=False`` (a web app's visitor without a login) never sends ``HF_TOKEN``: a private repo is not found,
    a public one pulls."""
    push(trained, "alice/secret-2", private=True)
    push(trained, "alice/public-2")
    assert os.environ["HF_TOKEN"]  # this machine has a token that could read it
    with pytest.raises(HubError, match="not found"):
        pull("alice/secret-2", token=False, output=tmp_path / "secret")
    assert not (tmp_path / "secret").exists()
    assert pull("alice/public-2", token=False, output=tmp_path / "public").repo_id == "alice/public-2"


def test_an_unreachable_hub_fails_fast_with_a_clear_message(online, monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubError, match=f"cannot reach the Hub at http://127.0.0.1:{port}"):
        pull("alice/anything", output=tmp_path / "x")


def test_resolve_takes_a_folder_a_store_name_or_a_hub_id(online, trained):
    push(trained, "alice/capitals-lora")
    AdapterStore().add(trained, "mine")
    assert resolve_adapter(str(trained)).source == "folder"
    assert resolve_adapter("mine").source == "store"
    hub = resolve_adapter("alice/capitals-lora")
    assert hub.source == "hub" and hub.describe().startswith("alice/capitals-lora@")
    with pytest.raises(peftlab.AdapterError, match="not a folder, not in the local store"):
        resolve_adapter("no-such-adapter")


# --- search ---------------------------------------------------------------------------------------------------


def test_search_lists_adapters_of_a_base_with_their_method(online, trained):
    push(trained, "alice/capitals-lora")
    push(trained, "alice/other-lora")
    online.set_stats("alice/other-lora", downloads=50, likes=3)
    online.add_repo("alice/unrelated", {"README.md": "---\nlibrary_name: peft\nbase_model: someone/else\n---\n"})
    found = search(BASE)
    assert [a.repo_id for a in found] == ["alice/other-lora", "alice/capitals-lora"]  # most downloaded first
    assert found[0].method == "lora" and found[0].downloads == 50 and found[0].likes == 3 and found[0].last_modified
    assert search(BASE, method="prompt_tuning") == []
    assert [a.repo_id for a in search(BASE, query="capitals")] == ["alice/capitals-lora"]


# --- the CLI, and the token never written anywhere -------------------------------------------------------------


def test_cli_push_search_pull_generate_and_the_token_is_nowhere(online, trained, tiny_dir, tmp_path):
    code, out, err = _run("push", str(trained), "alice/cli-lora", "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["commit_sha"] in pushed["commit_url"]
    code, out, err = _run("search", "--base", BASE, "--json")
    assert code == 0 and [a["repo_id"] for a in json.loads(out)] == ["alice/cli-lora"]
    code, out, err = _run("pull", "alice/cli-lora", "--json")
    assert code == 0, err
    assert json.loads(out)["sha"] == pushed["commit_sha"]
    code, out, err = _run(
        "generate",
        "--adapter",
        "alice/cli-lora",
        "--base",
        str(tiny_dir),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert code == 0, err
    assert f"adapter: alice/cli-lora@{pushed['commit_sha'][:12]}" in err
    code, out, err = _run("pull", "alice/does-not-exist")
    assert code == 2 and "not found" in err
    written = [p for p in (tmp_path, Path(os.environ["HF_HOME"]), trained) if p.exists()]
    for root in written:
        for f in root.rglob("*"):
            if f.is_file():
                assert WRITE_TOKEN.encode() not in f.read_bytes(), f"the token was written to {f}"
    for repo in online.repos.values():
        for commit in repo.commits.values():
            assert all(WRITE_TOKEN.encode() not in data for data in commit.files.values())


# --- interop through the Hub protocol, both ways ---------------------------------------------------------------


def test_a_peftlab_push_loads_in_peft_from_the_hub_with_the_same_logits(online, trained, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    push(trained, "alice/interop-lora")
    model, _ = load_model(tiny_dir, dtype="float32", device="cpu")
    name = peftlab.load_adapter(model, resolve_adapter("alice/interop-lora").path)
    ours = _logits(model, name)
    theirs_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), "alice/interop-lora")
    with torch.no_grad():
        theirs = theirs_model(input_ids=torch.tensor([[1, 5, 9, 23, 42, 7]])).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_a_peft_push_is_pulled_by_peftlab_with_the_same_logits(online, tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    theirs = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    theirs.push_to_hub("alice/from-peft")
    result = pull("alice/from-peft", base=str(tiny_dir))
    model, _ = load_model(tiny_dir, dtype="float32", device="cpu")
    name = peftlab.load_adapter(model, result.path)
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor([[1, 5, 9, 23, 42, 7]])).logits
    assert (_logits(model, name) - expected).abs().max().item() < 1e-4


INTEROP = {  # method → peftlab config (small); the peft side reads the config peftlab pushed
    "lora": {"r": 4, "init_lora_weights": False},
    "adalora": {"init_r": 4, "target_r": 2, "total_step": 10},
    "prompt_tuning": {"num_virtual_tokens": 4, "prompt_tuning_init": "RANDOM"},
    "p_tuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "prefix_tuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
}
IDS = torch.tensor([[1, 5, 9, 23, 42, 7, 11, 3]])


def _peft_logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    return out[:, -IDS.shape[1] :]  # peft's prompt methods also return the virtual tokens' positions


@pytest.mark.parametrize("method", sorted(INTEROP))
def test_interop_with_peft_through_the_hub_both_ways(online, tiny_dir, tmp_path, method):
    """peftlab push → ``PeftModel.from_pretrained(repo)``; peft ``push_to_hub`` → ``peftlab pull``: same logits."""
    from peft import PeftConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftlab.testing import randomize_adapter

    ours, _ = load_model(tiny_dir, dtype="float32", device="cpu")
    peftlab.add_adapter(ours, method, INTEROP[method])
    randomize_adapter(ours, std=0.1, seed=1)
    push(peftlab.save_adapter(ours, tmp_path / "ours"), f"alice/{method}-ours")
    with torch.no_grad(), peftlab.active_adapters(ours, "default"):
        want = ours(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), f"alice/{method}-ours")
    assert (_peft_logits(theirs.eval()) - want).abs().max().item() < 1e-4, f"{method}: peft reads our push"

    cfg = PeftConfig.from_pretrained(f"alice/{method}-ours")
    cfg.inference_mode = False
    made = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in made.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    made.eval().push_to_hub(f"alice/{method}-peft")
    expected = _peft_logits(made)
    loaded, _ = load_model(tiny_dir, dtype="float32", device="cpu")
    name = peftlab.load_adapter(loaded, pull(f"alice/{method}-peft", base=str(tiny_dir)).path)
    with torch.no_grad(), peftlab.active_adapters(loaded, name):
        got = loaded(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits
    assert (got - expected).abs().max().item() < 1e-4, f"{method}: we read peft's push"
    assert (got - want).abs().max().item() > 1e-3  # the two adapters differ: each direction proved something


@pytest.mark.smollm2
def test_smollm2_adapter_push_search_pull_generate(hub_env, smollm2, tmp_path, monkeypatch):
    """The real model: an adapter of SmolLM2 goes up, is found under its base, comes back and replies as before."""
    from peftlab.generate import generate_text
    from peftlab.models import DEFAULT_MODEL_ID

    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))
    model, tok = smollm2
    peftlab.add_adapter(model, "lora", {"r": 4, "init_lora_weights": False})
    local = generate_text(model, tok, "What is the capital of France?", max_new_tokens=8, adapter="default")
    pushed = push(peftlab.save_adapter(model, tmp_path / "smol-lora"), "alice/smol-lora")
    found = search(DEFAULT_MODEL_ID, method="lora")
    assert [a.repo_id for a in found] == ["alice/smol-lora"]
    code, out, err = _run(
        "generate",
        "--adapter",
        "alice/smol-lora",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "8",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["reply"] == local and f"alice/smol-lora@{pushed.commit_sha[:12]}" in err


# --- bad input leaves everything as it was ----------------------------------------------------------------------


def test_pull_of_an_adapter_for_another_base_fails_and_keeps_the_store(online, trained, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    push(trained, "alice/capitals-lora")
    wider = tmp_path / "wider"
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=96,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
        )
    ).save_pretrained(wider)
    with pytest.raises(peftlab.AdapterError, match="hidden_size"):
        pull("alice/capitals-lora", base=str(wider))
    assert not AdapterStore().root.exists() or not any(AdapterStore().root.iterdir())


def test_an_interrupted_push_or_pull_changes_nothing(online, trained, monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    first = push(trained, "alice/steady")
    store = AdapterStore()
    pulled = pull("alice/steady")
    before = {p.name: p.read_bytes() for p in pulled.path.iterdir()}

    def cut(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    with monkeypatch.context() as m:
        m.setattr(HfApi, "create_commit", cut)
        with pytest.raises(HubError, match="cannot reach the Hub"):
            push(trained, "alice/steady")
    assert online.repo("alice/steady").branches["main"] == first.commit_sha
    with monkeypatch.context() as m:
        m.setattr("huggingface_hub.snapshot_download", cut)
        with pytest.raises(HubError, match="cannot reach the Hub"):
            pull("alice/steady")
    assert {p.name: p.read_bytes() for p in pulled.path.iterdir()} == before
    assert [i.name for i in store.list()] == ["alice--steady"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")], "no half-written folder is left"


def test_an_interrupted_store_remove_leaves_no_half_adapter(online, trained, monkeypatch):
    import peftlab_hub.store as store_module

    store = AdapterStore()
    store.add(trained, "mine")
    store.add(trained, "other")
    real = shutil.rmtree

    def half(path, *a, **k):  # deletes one file, then the power goes
        next(p for p in Path(path).iterdir() if p.is_file()).unlink()
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store_module.shutil, "rmtree", half)
    with pytest.raises(KeyboardInterrupt):
        store.remove("mine")
    monkeypatch.setattr(store_module.shutil, "rmtree", real)
    assert not (store.root / "mine").exists() and [i.name for i in store.list()] == ["other"]
    store.add(trained, "mine")  # the name is free again
    with pytest.raises(peftlab.AdapterError, match="has no adapter named 'nope'"):
        store.remove("nope")
    code, _, err = _run("store", "rm", "nope")
    assert code == 2 and "has no adapter named 'nope'" in err and "Traceback" not in err


def test_cli_store_and_doctor(online, trained, tmp_path):
    code, out, err = _run("store", "add", str(trained), "mine")
    assert code == 0, err
    code, out, _ = _run("store", "list", "--json")
    assert [i["name"] for i in json.loads(out)] == ["mine"] and json.loads(out)[0]["method"] == "lora"
    code, out, _ = _run("store", "show", "mine")
    assert "base_model: alice/tiny-llama" in out
    code, out, err = _run("store", "add", str(trained), "mine")
    assert code == 2 and "already has an adapter named 'mine'" in err
    code, out, err = _run("doctor", "mine", "--base", str(online.files and Path(os.environ["HF_HOME"]).parent))
    assert code == 1 and "✗ base_model" in out  # that folder is no model
    code, out, err = _run("doctor", str(trained), "--json")
    report = json.loads(out)
    assert code == 0 and {c["name"] for c in report["checks"]} >= {"files", "method", "shapes"}
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(trained / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    code, out, _ = _run("doctor", str(pickled))
    assert code == 1 and "adapter_model.bin" in out and "never unpickles" in out
    code, out, _ = _run("store", "rm", "mine")
    assert code == 0 and _run("store", "list", "--json")[1].strip() == "[]"


def test_eval_record_puts_exact_match_in_the_pushed_card(online, trained, tiny_dir, tmp_path):
    folder = tmp_path / "evaluated"
    shutil.copytree(trained, folder)
    code, out, err = _run("eval", "--dataset", "capitals-json", "--record", "--base", str(tiny_dir))
    assert code == 2 and "pass --adapter" in err
    args = ["--dataset", "capitals-json", "--max-samples", "4", "--max-new-tokens", "4", "--base", str(tiny_dir)]
    code, out, err = _run("eval", "--adapter", str(folder), "--record", *args)
    assert code == 0, err
    assert "exact_match" in json.loads((folder / "peftlab.json").read_text())["evaluation"]["adapted"]
    push(folder, "alice/evaluated")
    assert "| exact match |" in online.files("alice/evaluated")["README.md"].decode()

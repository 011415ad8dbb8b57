"""Composition recipes (stacks): written by ``peftlab_hub.stack`` / ``peftlab compose --stack``, loaded by
``peftlab.load_adapter`` as a group of weighted adapters, refused when a parent is missing or changed."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import peftlab
from peftlab.adapters import get_weight, set_weight
from peftlab.errors import AdapterError, AdapterMismatchError, ConfigError, MethodError
from peftlab.models import tiny_model
from peftlab.recipe import RECIPE_FILE, read_recipe
from peftlab.testing import logits, random_ids, randomize_adapter

peftlab_hub = pytest.importorskip("peftlab_hub")
from peftlab_hub import StackError, stack  # noqa: E402

STACK = [("lora", None, 0.5), ("prompt_tuning", {"num_virtual_tokens": 4}, 1.0), ("bitfit", None, 0.7)]
STACK += [("adapter", {"bottleneck_size": 8}, 0.3)]


def _save(tmp_path, method, config=None, seed=0, arch="llama"):
    model = tiny_model(arch).eval()
    peftlab.add_adapter(model, method, config)
    randomize_adapter(model, std=0.2, seed=seed)
    return peftlab.save_adapter(model, tmp_path / f"{method}-{arch}-{seed}")


@pytest.fixture
def parents(tmp_path):
    return [(_save(tmp_path / "parents", m, c, seed=i), w) for i, (m, c, w) in enumerate(STACK)]


def _by_hand(parents):
    """The stack loaded adapter by adapter, weighted by set_weight: what the recipe must reproduce."""
    model = tiny_model().eval()
    for i, (folder, w) in enumerate(parents):
        peftlab.load_adapter(model, folder, f"p{i}")
        set_weight(model, f"p{i}", w)
    return model


def test_a_stack_of_four_methods_reloads_to_the_same_outputs(parents, tmp_path):
    out = stack([str(p) for p, _ in parents], [w for _, w in parents], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    assert data["format_version"] == 1 and data["combination"] == "stack" and data["weights"] == [0.5, 1.0, 0.7, 0.3]
    assert [p["method"] for p in data["parents"]] == ["lora", "prompt_tuning", "bitfit", "adapter"]
    assert all(len(p["weights_sha256"]) == 64 and p["source"] == "folder" for p in data["parents"])
    assert data["base_fingerprint"]["hidden_size"] == 64 and (out / "README.md").is_file()

    ids = random_ids(batch=2, length=9, seed=3)
    expected = logits(_by_hand(parents), ids)
    model = tiny_model().eval()
    with peftlab.active_adapters(model, None):
        base = logits(model, ids)
    name = peftlab.load_adapter(model, out)
    assert name == "recipe"
    assert torch.equal(logits(model, ids), expected)
    assert [get_weight(model, f"recipe__{i}") for i in range(4)] == [0.5, 1.0, 0.7, 0.3]
    # the group switches like one adapter: base, adapted, and one batch with a row of each
    with peftlab.active_adapters(model, None):
        assert torch.equal(logits(model, ids), base)
    peftlab.set_active(model, None)
    peftlab.set_active(model, name)
    assert torch.equal(logits(model, ids), expected)
    both = torch.cat([ids[:1], ids[:1]])
    with peftlab.mixed_batch(model, [name, None]):
        mixed = logits(model, both)
    assert torch.allclose(mixed[0], expected[0], atol=1e-5) and torch.allclose(mixed[1], base[0], atol=1e-5)


def test_recipe_folders_move_with_their_parents(parents, tmp_path):
    """Folder parents are recorded relative to the recipe: the whole tree can be moved."""
    stack([str(p) for p, _ in parents[:2]], [0.5, 1.0], output=tmp_path / "recipe")
    expected = logits(_by_hand(parents[:2]), random_ids(seed=1))
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path, moved, ignore=shutil.ignore_patterns("elsewhere"))
    shutil.rmtree(tmp_path / "parents")
    model = tiny_model().eval()
    assert peftlab.load_adapter(model, moved / "recipe", "mine") == "mine"
    assert torch.equal(logits(model, random_ids(seed=1)), expected)


def test_a_changed_parent_is_refused_naming_it_and_both_hashes(parents, tmp_path):
    out = stack([str(p) for p, _ in parents], output=tmp_path / "recipe")
    recorded = read_recipe(out).parents[2].weights_sha256
    _save(tmp_path / "parents", "bitfit", seed=99)  # another bitfit adapter over the same folder
    shutil.rmtree(parents[2][0])
    shutil.move(tmp_path / "parents" / "bitfit-llama-99", parents[2][0])
    model = tiny_model().eval()
    with pytest.raises(AdapterMismatchError) as err:
        peftlab.load_adapter(model, out)
    msg = str(err.value)
    assert str(parents[2][0]) in msg and recorded in msg and "changed" in msg
    assert not peftlab.adapter_state(model).adapters, "nothing is loaded when a parent is refused"


def test_a_parent_whose_config_or_extra_state_changed_is_refused_and_old_recipes_still_load(parents, tmp_path):
    """The same weights with another lora_alpha compute something else: a recipe pins adapter_config.json (and
    peftlab_extra.safetensors) too. A recipe made before these were recorded pins the weights only, as it did."""
    from peftlab.recipe import sha256_file
    from peftlab_hub.doctor import diagnose

    ptune = _save(tmp_path / "parents", "p_tuning", {"num_virtual_tokens": 3})  # it keeps its encoder as extra state
    lora = parents[0][0]
    out = stack([str(lora), str(ptune)], output=tmp_path / "recipe")
    recorded = json.loads((out / RECIPE_FILE).read_text())["parents"]
    assert (
        recorded[0]["config_sha256"] == sha256_file(lora / "adapter_config.json") and "extra_sha256" not in recorded[0]
    )
    assert recorded[1]["extra_sha256"] == sha256_file(ptune / "peftlab_extra.safetensors")
    peftlab.load_adapter(tiny_model(), out)

    original = (lora / "adapter_config.json").read_text()
    config = json.loads(original)
    (lora / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": config["lora_alpha"] * 4}))
    with pytest.raises(AdapterMismatchError, match=r"changed since the recipe was made: its adapter_config.json has"):
        peftlab.load_adapter(tiny_model(), out)
    report = diagnose(out)
    assert report["parent 1"].ok is False and "adapter_config.json has sha256" in report["parent 1"].detail
    assert recorded[0]["config_sha256"] in report["parent 1"].detail

    old = json.loads((out / RECIPE_FILE).read_text())
    for p in old["parents"]:
        p.pop("config_sha256"), p.pop("extra_sha256", None)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / RECIPE_FILE).write_text(json.dumps(old))
    assert peftlab.load_adapter(tiny_model(), tmp_path / "old")  # an older recipe: the weights are as recorded

    (lora / "adapter_config.json").write_text(original)
    (ptune / "peftlab_extra.safetensors").unlink()
    with pytest.raises(AdapterMismatchError, match=r"its peftlab_extra.safetensors is gone, the recipe recorded"):
        peftlab.load_adapter(tiny_model(), out)


def test_a_missing_parent_is_named(parents, tmp_path):
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    shutil.rmtree(parents[1][0])
    with pytest.raises(AdapterError, match="prompt_tuning.*is missing"):
        peftlab.load_adapter(tiny_model(), out)


@pytest.mark.parametrize(
    ("weights", "problem"), [([1.0], "1 weight"), ([1.0, float("nan")], "finite"), ([float("inf"), 1.0], "finite")]
)
def test_bad_weights_are_refused_and_nothing_is_written(parents, tmp_path, weights, problem):
    with pytest.raises(ConfigError, match=problem):
        stack([str(p) for p, _ in parents[:2]], weights, output=tmp_path / "recipe")
    assert not (tmp_path / "recipe").exists()


def test_parents_on_different_bases_are_refused(tmp_path):
    a = _save(tmp_path, "lora", seed=1)
    b = _save(tmp_path, "bitfit", seed=2, arch="gpt2")
    with pytest.raises(StackError, match="different base models"):
        stack([str(a), str(b)], output=tmp_path / "recipe")
    assert not (tmp_path / "recipe").exists()


def test_a_recipe_loaded_into_another_architecture_names_the_mismatch(parents, tmp_path):
    """A llama recipe into GPT-2, whose fingerprint lacks num_key_value_heads: the base-mismatch error, no KeyError."""
    out = stack([str(parents[0][0])], output=tmp_path / "recipe")
    assert "num_key_value_heads" in read_recipe(out).base_fingerprint
    with pytest.raises(
        AdapterMismatchError, match="made for another base model.*num_key_value_heads: recipe .* vs model None"
    ):
        peftlab.load_adapter(tiny_model("gpt2"), out)


def test_a_weight_for_a_method_that_cannot_scale_is_refused_with_its_note(parents, tmp_path):
    note = peftlab.get_method("prompt_tuning").capabilities.scale_note
    with pytest.raises(StackError) as err:
        stack([str(p) for p, _ in parents[:2]], [1.0, 0.5], output=tmp_path / "recipe")
    assert "prompt_tuning" in str(err.value) and note in str(err.value)


def test_a_method_that_cannot_stack_is_refused_with_its_note(parents, tmp_path, monkeypatch):
    handle = peftlab.get_method("bitfit")
    caps = dataclasses.replace(handle.capabilities, stackable=False, stack_note="it owns every bias alone")
    out = stack([str(p) for p, _ in parents[:3]], output=tmp_path / "recipe")  # made while bitfit could stack
    monkeypatch.setattr(handle.obj, "capabilities", caps)
    with pytest.raises(StackError, match="bitfit adapters cannot be stacked.*owns every bias alone"):
        stack([str(p) for p, _ in parents[:3]], output=tmp_path / "recipe2")
    with pytest.raises(MethodError, match="owns every bias alone"):
        peftlab.load_adapter(tiny_model(), out)


def test_bad_recipe_files_are_refused(parents, tmp_path):
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    for change, problem in [
        ({"format_version": 99}, "newer peftlab"),
        ({"weights": [1.0]}, "1 weight"),
        ({"parents": []}, "non-empty"),
        ({"combination": "cat"}, "not 'stack'"),
    ]:
        (out / RECIPE_FILE).write_text(json.dumps({**data, **change}))
        with pytest.raises(AdapterError, match=problem):
            peftlab.load_adapter(tiny_model(), out)
    with pytest.raises(AdapterError, match="composition recipe"):
        peftlab.read_adapter(out)  # one adapter's reader says what the folder is


def test_a_recipe_name_already_loaded_is_refused(parents, tmp_path):
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    model = tiny_model()
    peftlab.load_adapter(model, out)
    with pytest.raises(ConfigError, match="already has"):
        peftlab.load_adapter(model, out)
    assert peftlab.load_adapter(model, out, "again") == "again"


# --- the command line -------------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "peftlab", *args], capture_output=True, text=True, env=env)


def _tiny_parents(tiny_dir, tmp_path):
    from peftlab.models import load_model

    out = []
    for i, (method, cfg) in enumerate([("lora", None), ("prompt_tuning", {"num_virtual_tokens": 3})]):
        model, _ = load_model(str(tiny_dir))
        peftlab.add_adapter(model, method, cfg)
        randomize_adapter(model, std=0.3, seed=i)
        out.append(peftlab.save_adapter(model, tmp_path / method))
    return out


def test_cli_compose_stack_then_generate_and_eval_with_the_recipe(tiny_dir, tmp_path):
    from peftlab.generate import generate_text
    from peftlab.models import load_model

    lora, prompt = _tiny_parents(tiny_dir, tmp_path)
    made = run("compose", "--stack", str(lora), str(prompt), "--weights", "0.5", "1", "--output", str(tmp_path / "r"))
    assert made.returncode == 0, made.stderr[-2000:]
    assert read_recipe(tmp_path / "r").weights == [0.5, 1.0]

    model, tok = load_model(str(tiny_dir))
    peftlab.load_adapter(model, lora, "a")
    peftlab.load_adapter(model, prompt, "b")
    set_weight(model, "a", 0.5)
    expected = generate_text(model, tok, "hello", max_new_tokens=6)
    gen_json = run(
        "generate", "--base", str(tiny_dir), "--adapter", str(tmp_path / "r"), "--prompt", "hello",
        "--max-new-tokens", "6", "--json",
    )  # fmt: skip
    assert gen_json.returncode == 0, gen_json.stderr[-2000:]
    assert json.loads(gen_json.stdout)["reply"] == expected

    ev = run(
        "eval", "--base", str(tiny_dir), "--adapter", str(tmp_path / "r"), "--dataset", "capitals-json",
        "--max-samples", "2", "--max-new-tokens", "4", "--json", "--record",
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout)
    assert result["adapted"]["eval_loss"] != result["base"]["eval_loss"]  # the stack acts, the base is compared
    # --record keeps it in composition.json; the recipe still loads, and its card shows the metrics
    recipe = read_recipe(tmp_path / "r")
    assert recipe.data["evaluation"] == result and recipe.weights == [0.5, 1.0]
    from peftlab_hub.card import recipe_card

    card = recipe_card(recipe.data)
    assert (
        "## Metrics" in card
        and f"| eval loss | {result['base']['eval_loss']:.4g} | {result['adapted']['eval_loss']:.4g} |" in card
    )
    secret = "hf_" + "Q" * 34  # a token pasted into a dataset path never reaches the card
    leaky = {**recipe.data, "evaluation": {**result, "dataset": f"/data/{secret}/rows.jsonl"}}
    assert "rows.jsonl" in recipe_card(leaky) and secret not in recipe_card(leaky)


def test_cli_compose_stack_refuses_nan_weights(tiny_dir, tmp_path):
    lora, prompt = _tiny_parents(tiny_dir, tmp_path)
    out = run("compose", "--stack", str(lora), str(prompt), "--weights", "nan", "1", "--output", str(tmp_path / "r"))
    assert out.returncode != 0 and "finite" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.smollm2
def test_smollm2_lora_and_prompt_stack_reloads_to_identical_greedy_replies_and_refuses_a_changed_parent(
    smollm2, smollm2_dir, tmp_path, capsys
):
    """Done-when of the stack: a LoRA + prompt-tuning recipe on SmolLM2 gives, through `peftlab generate`, exactly
    the greedy reply of the two adapters stacked by hand; once a parent's weights change it is refused."""
    from peftlab.generate import generate_text

    model, tok = smollm2
    folders = []
    for i, (method, cfg) in enumerate([("lora", {"r": 4}), ("prompt_tuning", {"num_virtual_tokens": 4})]):
        peftlab.add_adapter(model, method, cfg, name=method)
        randomize_adapter(model, method, std=0.05 if method == "lora" else 0.02, seed=i)
        folders.append(peftlab.save_adapter(model, tmp_path / method, method))
    set_weight(model, "lora", 0.5)
    prompt = "Name three colours."
    expected = generate_text(model, tok, prompt, max_new_tokens=12)
    with peftlab.active_adapters(model, None):
        assert expected != generate_text(model, tok, prompt, max_new_tokens=12), "the stack must change the reply"

    from peftlab.cli import main

    assert (
        main(["compose", "--stack", *map(str, folders), "--weights", "0.5", "1", "--output", str(tmp_path / "r")]) == 0
    )
    args = ("generate", "--base", str(smollm2_dir), "--adapter", str(tmp_path / "r"), "--prompt", prompt)
    gen = run(*args, "--max-new-tokens", "12", "--json")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert json.loads(gen.stdout)["reply"] == expected

    randomize_adapter(model, "lora", std=0.05, seed=7)  # the LoRA parent is trained on: its file changes
    peftlab.save_adapter(model, folders[0], "lora")
    capsys.readouterr()
    assert main([*args, "--max-new-tokens", "12"]) == 2  # refused before the base model loads
    err = capsys.readouterr().err
    assert "changed since the recipe was made" in err and str(folders[0]) in err


def test_the_chat_engine_loads_a_recipe_like_an_adapter(tiny_dir, tmp_path):
    """The app's chat: a recipe is one choice; its reply is the stack's, the base column the base model's."""
    from peftlab.generate import generate_text
    from peftlab.webui.engine import ChatEngine

    lora, prompt = _tiny_parents(tiny_dir, tmp_path)
    recipe = stack([str(lora), str(prompt)], [0.5, 1.0], output=tmp_path / "r")
    engine = ChatEngine()
    loaded = engine.load(recipe)
    assert engine.load(recipe) is loaded and "lora + prompt_tuning" in loaded.method.name
    assert loaded.method.capabilities.mixed_batch  # both methods mix batches: one batched pass
    model, tok = engine.model, engine.tokenizer
    base, adapted = list(engine.stream(loaded, "Capital of France?", max_new_tokens=6))[-1]
    assert adapted.strip() == generate_text(model, tok, "Capital of France?", max_new_tokens=6, adapter=loaded.name)
    assert base.strip() == generate_text(model, tok, "Capital of France?", max_new_tokens=6, adapter=None)
    assert [get_weight(model, f"{loaded.name}__{i}") for i in range(2)] == [0.5, 1.0]
    assert engine.nearest_tokens(loaded) is None  # a stack has no one soft prompt to read


def test_a_recipe_is_not_one_adapter_for_merge_or_weights(parents, tmp_path):
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    model = tiny_model()
    name = peftlab.load_adapter(model, out)
    with pytest.raises(MethodError, match="composition recipe.*peftlab compose"):
        peftlab.merge_adapter(model, name)
    with pytest.raises(MethodError, match="composition recipe"):
        set_weight(model, name, 0.5)


def test_a_recipe_cannot_be_a_parent(parents, tmp_path):
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    with pytest.raises(StackError, match="itself a recipe"):
        stack([str(out), str(parents[2][0])], output=tmp_path / "nested")
    assert not (tmp_path / "nested").exists()


def test_restacking_into_the_folder_that_holds_the_parents_is_refused(parents, tmp_path):
    """A pulled recipe keeps its parents in parents/<i>: stacking them into the recipe's own folder would replace
    that folder whole, deleting them. Refused by name; the folder stays as it was."""
    out = stack([str(p) for p, _ in parents[:2]], output=tmp_path / "recipe")
    for i, (p, _) in enumerate(parents[:2]):
        shutil.copytree(p, out / "parents" / str(i))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    inside = [str(out / "parents" / "0"), str(out / "parents" / "1")]
    with pytest.raises(StackError, match="parent .*parents/0 .* lies inside the output folder .* would be deleted"):
        stack(inside, output=out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_cli_chat_with_a_recipe_answers_adapted_and_base(tiny_dir, tmp_path):
    lora, prompt = _tiny_parents(tiny_dir, tmp_path)
    stack([str(lora), str(prompt)], [0.5, 1.0], output=tmp_path / "r")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "peftlab", "chat", "--base", str(tiny_dir), "--adapter", str(tmp_path / "r")]
        + ["--max-new-tokens", "4"],
        input="hello\n\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[adapted]" in out.stdout and "[base]" in out.stdout


def test_the_doctor_checks_a_recipe_and_each_parent(parents, tmp_path):
    """``peftlab doctor RECIPE``: the recipe reads, each parent is there unchanged, the methods stack, then every
    parent's own checks; a changed parent fails its check, names both hashes, and the stack check is skipped."""
    from peftlab.cli import main as cli
    from peftlab_hub.doctor import CHECKS, diagnose

    out = stack([str(p) for p, _ in parents], [w for _, w in parents], output=tmp_path / "recipe")
    report = diagnose(out)
    names = [c.name for c in report.checks]
    assert report.ok, report.format()
    assert names[:6] == ["recipe", "parent 1", "parent 2", "parent 3", "parent 4", "stack"]
    assert [n for n in names if n.startswith("parent 4: ")] == [f"parent 4: {c}" for c in CHECKS]  # its own checks
    assert report["parent 4: files"].ok is True and report["parent 4: method"].ok is True
    assert "4 parents, weights 0.5, 1, 0.7, 0.3" in report["recipe"].detail
    assert cli(["doctor", str(out), "--json"]) == 0

    weights = parents[2][0] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # the bitfit parent changes after the recipe was made
    report = diagnose(out)
    assert not report.ok and report["parent 3"].ok is False and report["stack"].ok is None
    assert (
        "changed" in report["parent 3"].detail
        and read_recipe(out).parents[2].weights_sha256 in report["parent 3"].detail
    )
    assert report["parent 1"].ok is True
    assert cli(["doctor", str(out)]) == 1
    (parents[1][0] / "adapter_model.safetensors").unlink()  # a parent's weights gone: reported, not raised
    assert report["parent 1"].ok is True
    report = diagnose(out)
    assert report["parent 2"].ok is False and "adapter_model.safetensors is missing" in report["parent 2"].detail
    shutil.rmtree(parents[0][0])  # a parent gone
    report = diagnose(out)
    assert report["parent 1"].ok is False and "missing" in report["parent 1"].detail


def test_a_recipe_whose_parent_is_itself_is_refused_by_load_and_the_doctor(parents, tmp_path):
    """A parent ``"path": "."`` is the recipe's own folder: refused by name, never loaded or checked in a loop."""
    from peftlab.cli import main as cli
    from peftlab_hub.doctor import diagnose

    out = stack([str(parents[0][0])], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    me = {"ref": ".", "source": "folder", "path": ".", "method": "lora", "adapter_name": "default"}
    data["parents"].append({**me, "weights_sha256": "0" * 64})
    data["weights"].append(1.0)
    (out / RECIPE_FILE).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="parent '.' of recipe .* is itself a recipe"):
        peftlab.load_adapter(tiny_model(), out)
    report = diagnose(out)
    assert report["parent 1"].ok is True and report["parent 2"].ok is False
    assert "itself a recipe" in report["parent 2"].detail and report["stack"].ok is None
    assert not any(c.name.startswith("parent 2: ") for c in report.checks)
    assert cli(["doctor", str(out)]) == 1


@pytest.mark.parametrize("ref", ["../outside", "{outside}"])
def test_a_store_parent_cannot_reach_outside_the_store(parents, tmp_path, monkeypatch, ref):
    from peftlab.recipe import sha256_file

    monkeypatch.setenv("PEFTLAB_STORE", str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    outside = shutil.copytree(parents[0][0], tmp_path / "outside")
    ref = ref.format(outside=outside)
    out = stack([str(parents[1][0])], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    sha = sha256_file(outside / "adapter_model.safetensors")
    data["parents"] = [{"ref": ref, "source": "store", "method": "lora", "adapter_name": "default"}]
    data["parents"][0]["weights_sha256"] = sha
    (out / RECIPE_FILE).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="of recipe .*: invalid adapter name .*no '..', no slashes"):
        peftlab.load_adapter(tiny_model(), out)


def _hub_parent(folder, sha="a" * 40, **extra):
    from peftlab.recipe import sha256_file

    return {"ref": "alice/x", "source": "hub", "repo_id": "alice/x", "sha": sha, "method": "lora"} | {
        "adapter_name": "default",
        "weights_sha256": sha256_file(folder / "adapter_model.safetensors"),
        **extra,
    }


@pytest.mark.parametrize("sha", ["main", "a" * 12, "A" * 40, "a" * 39 + "/"])
def test_a_hub_parent_must_be_pinned_to_a_full_commit(parents, tmp_path, sha):
    out = stack([str(parents[0][0])], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    data["parents"] = [_hub_parent(parents[0][0], sha)]
    (out / RECIPE_FILE).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="must be pinned to a commit sha \\(40 hex digits\\)"):
        read_recipe(out)


def test_a_hub_parent_s_path_is_followed_only_where_pull_puts_its_copy(parents, tmp_path):
    """A recipe from the Hub says what it likes: its Hub parent's "path" ("../anywhere") is not followed (the Hub is
    asked, which fails offline here); parents/<i>, where pull copies each parent, is."""
    lora = parents[0][0]
    out = stack([str(lora)], output=tmp_path / "recipe")
    data = json.loads((out / RECIPE_FILE).read_text())
    shutil.copytree(lora, tmp_path / "anywhere")
    data["parents"] = [_hub_parent(lora, path="../anywhere")]
    (out / RECIPE_FILE).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="parent 'alice/x@aaaaaaaaaaaa' of recipe .* cannot be had"):
        peftlab.load_adapter(tiny_model(), out)
    shutil.copytree(lora, out / "parents" / "0")
    data["parents"] = [_hub_parent(lora, path="parents/0")]
    (out / RECIPE_FILE).write_text(json.dumps(data))
    assert peftlab.load_adapter(tiny_model(), out) == "recipe"

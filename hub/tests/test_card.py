"""The Hub model card: built from adapters the trainer saved (LoRA, bottleneck adapters) and from one `peft` saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from peftlab.models import load_model, tiny_model
from peftlab.train import TrainArgs, train
from peftlab_hub.card import LOSS_CURVE_FILE, build_card

pytestmark = pytest.mark.usefixtures("one_thread")

BASE_ID = "peftlab-test/tiny-llama"  # recorded as the base, so the card's Hub fields have an id to name
SECRET = "hf_secretABCdef0123456789xyzXYZ"
PNG = b"\x89PNG\r\n\x1a\n"


def _train(tiny_dir, out, method, method_config):
    model, tok = load_model(tiny_dir)
    model.peftlab_base_id = BASE_ID
    args = TrainArgs(
        output_dir=str(out),
        method=method,
        method_config=method_config,
        dataset="capitals-json",
        max_steps=3,
        batch_size=2,
        max_length=96,
        max_eval_samples=4,
        learning_rate=5e-3,
    )
    return train(args, model=model, tokenizer=tok)


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", SECRET)  # present all through training and card building: it must reach neither
    try:
        yield _train(tiny_dir, tmp_path_factory.mktemp("lora"), "lora", {"r": 4})
    finally:
        mp.undo()


def _header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_lora_card_has_the_hub_header_metrics_curve_and_both_snippets(lora_run):
    card = build_card(lora_run.output_dir, repo_id="alice/capitals-lora", license="apache-2.0")
    head = _header(card.text)
    assert head["library_name"] == "peft" and head["base_model"] == BASE_ID
    assert head["pipeline_tag"] == "text-generation" and head["license"] == "apache-2.0"
    assert {"peftlab", "lora", f"base_model:adapter:{BASE_ID}"} <= set(head["tags"])
    assert "datasets" not in head  # a built-in dataset is no Hub id: the body names it
    from huggingface_hub import ModelCard

    assert ModelCard(card.text).data.base_model == BASE_ID  # the Hub client reads the same header

    before, after = lora_run.eval_loss_before, lora_run.eval_loss_after
    row = next(line for line in card.text.splitlines() if line.startswith("| eval loss |"))
    assert row == f"| eval loss | {before:.4g} | {after:.4g} |"
    assert "| perplexity |" in card.text and "exact match" not in card.text  # training does not measure it
    assert "`capitals-json`" in card.text and "after 3 optimizer steps" in card.text
    trainable, total = int(lora_run.params["trainable"]), int(lora_run.params["total"])
    assert f"| trainable parameters | {trainable:,} (" in card.text and f"of {total:,})" in card.text
    assert "| learning rate | 0.005 |" in card.text and "| max steps | 3 |" in card.text

    assert card.files[LOSS_CURVE_FILE].startswith(PNG)
    assert f"![loss curve]({LOSS_CURVE_FILE})" in card.text
    assert build_card(lora_run.output_dir).files[LOSS_CURVE_FILE] == card.files[LOSS_CURVE_FILE]  # reproducible

    assert 'PeftModel.from_pretrained(base, "alice/capitals-lora")' in card.text
    assert "peftlab generate --adapter alice/capitals-lora" in card.text
    assert 'load_adapter(model, snapshot_download("alice/capitals-lora"))' in card.text


def test_the_trainer_records_what_the_card_needs(lora_run):
    meta = json.loads((lora_run.output_dir / "peftlab.json").read_text())["card"]
    steps = [e for e in lora_run.history if e["event"] == "step"]
    assert meta["loss_curve"] == [[e["step"], e["loss"]] for e in steps] and len(steps) == 3
    assert meta["metrics"]["eval_loss"] == lora_run.eval_loss_after
    assert meta["metrics"]["perplexity"] == pytest.approx(2.718281828**lora_run.eval_loss_after)
    assert meta["parameters"] == lora_run.params
    assert "output_dir" not in meta["training"]


def test_evaluation_results_add_exact_match(lora_run):
    result = {
        "dataset": "capitals-json",
        "rows": 4,
        "task": "CAUSAL_LM",
        "adapted": {"eval_loss": 1.5, "perplexity": 4.48, "exact_match": 0.5},
        "base": {"eval_loss": 3.0, "perplexity": 20.1, "exact_match": 0.25},
    }
    text = build_card(lora_run.output_dir, evaluation=result).text
    assert "| exact match | 25.0% | 50.0% |" in text and "| eval loss | 3 | 1.5 |" in text
    assert "4 held-out rows of `capitals-json`" in text


def test_no_token_reaches_the_card(lora_run, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    for name in ("peftlab.json", "README.md", "adapter_config.json", "../progress.jsonl"):
        assert SECRET not in (lora_run.output_dir / name).read_text()
    folder = Path(shutil.copytree(lora_run.output_dir, tmp_path / "adapter"))
    meta = json.loads((folder / "peftlab.json").read_text())
    meta["card"]["training"].update(hub_token=SECRET, note=f"pushed with {SECRET}")  # as if one slipped in
    (folder / "peftlab.json").write_text(json.dumps(meta))
    card = build_card(folder, repo_id="alice/capitals-lora", extra_tags=[SECRET])
    assert SECRET not in card.text and "hub token" not in card.text
    assert all(SECRET.encode() not in data for data in card.files.values())


def test_bottleneck_adapter_card_names_its_plugin_and_has_no_peft_snippet(tiny_dir, tmp_path):
    res = _train(tiny_dir, tmp_path, "adapter", {"bottleneck_size": 8})
    card = build_card(res.output_dir, repo_id="alice/capitals-adapter")
    head = _header(card.text)
    assert head["library_name"] == "peft" and f"base_model:adapter:{BASE_ID}" in head["tags"]
    assert "adapter" in head["tags"] and "bottleneck-adapter" in head["tags"]
    assert "PeftModel" not in card.text and "from peft import" not in card.text
    assert "pip install peftlab peftlab-adapter" in card.text
    assert "peftlab generate --adapter alice/capitals-adapter" in card.text
    assert card.files[LOSS_CURVE_FILE].startswith(PNG)


def test_a_folder_saved_by_peft_gets_a_card(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    card = build_card(tmp_path)
    head = _header(card.text)
    assert head["library_name"] == "peft" and "lora" in head["tags"]
    assert head.get("base_model") == (cfg["base_model_name_or_path"] or None)
    assert "## Metrics" not in card.text and "## Loss curve" not in card.text and not card.files
    assert "PeftModel.from_pretrained" in card.text and '"r": 2' in card.text


def test_classifier_card(tiny_dir, tmp_path):
    from peftlab.data import label_names, load_rows

    model, tok = load_model(tiny_dir, task="SEQ_CLS", label_names=label_names(load_rows("sentiment")))
    model.peftlab_base_id = BASE_ID
    args = TrainArgs(
        output_dir=str(tmp_path),
        method_config={"r": 4},
        dataset="sentiment",
        max_steps=2,
        batch_size=2,
        max_length=64,
        max_eval_samples=4,
    )
    card = build_card(train(args, model=model, tokenizer=tok).output_dir, repo_id="alice/sentiment-lora")
    assert _header(card.text)["pipeline_tag"] == "text-classification"
    assert "| eval loss |" in card.text and "| perplexity |" not in card.text
    assert f'AutoModelForSequenceClassification.from_pretrained("{BASE_ID}", num_labels=3)' in card.text
    assert "peftlab eval --adapter alice/sentiment-lora" in card.text and "--dataset sentiment" in card.text


def test_a_resumed_run_records_the_whole_loss_curve(tiny_dir, tmp_path):
    first = _train(tiny_dir, tmp_path, "lora", {"r": 4})  # 3 steps, then 2 more on resume
    model, tok = load_model(tiny_dir)
    args = TrainArgs(
        output_dir=str(tmp_path),
        method_config={"r": 4},
        dataset="capitals-json",
        max_steps=5,
        batch_size=2,
        max_length=96,
        max_eval_samples=4,
        learning_rate=5e-3,
        resume=True,
    )
    res = train(args, model=model, tokenizer=tok)
    curve = json.loads((res.output_dir / "peftlab.json").read_text())["card"]["loss_curve"]
    assert [s for s, _ in curve] == [1, 2, 3, 4, 5]
    assert curve[:3] == [[e["step"], e["loss"]] for e in first.history if e["event"] == "step"]
    assert "at step 1, " in build_card(res.output_dir).text


def test_a_method_not_installed_here_still_gets_a_card(lora_run, tmp_path):
    folder = Path(shutil.copytree(lora_run.output_dir, tmp_path / "adapter"))
    for name, key, value in (
        ("peftlab.json", "method", "ghost"),
        ("peftlab.json", "plugin", "peftlab-ghost"),
        ("adapter_config.json", "peft_type", "GHOST"),
    ):
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, key: value}))
    card = build_card(folder, repo_id="alice/ghost")
    assert {"ghost", f"base_model:adapter:{BASE_ID}"} <= set(_header(card.text)["tags"])
    assert "pip install peftlab peftlab-ghost" in card.text and "PeftModel" not in card.text
    assert "| eval loss |" in card.text and card.files[LOSS_CURVE_FILE].startswith(PNG)


def test_secret_keys_are_told_from_token_counts():
    from peftlab_hub.card import SECRET_KEY

    assert all(SECRET_KEY.search(k) for k in ("token", "hf_token", "use_auth_token", "api_key", "password"))
    assert not any(SECRET_KEY.search(k) for k in ("num_virtual_tokens", "token_dim", "tokenizer_name_or_path"))


def test_public_json_drops_secrets_and_cuts_local_paths(monkeypatch):
    """What push uploads of peftlab.json and a recipe's composition.json: no token, no path of this machine."""
    from peftlab_hub.card import public_json, public_meta

    monkeypatch.setenv("HF_TOKEN", "an-env-token-value")
    data = {
        "dataset": "/home/jdoe/data/train.jsonl",
        "base": "~/models/tiny/",
        "windows": "C:\\Users\\jdoe\\models\\tiny",
        "hub_token": "anything",
        "note": f"{SECRET} and an-env-token-value",
        "relative": "data/train.jsonl",
        "hub": "alice/tiny-llama",
        "numbers": [1, 2.5, None, True],
    }
    assert public_json(data) == {
        "dataset": "./train.jsonl",
        "base": "./tiny",
        "windows": "./tiny",
        "note": "hf_*** and ***",
        "relative": "data/train.jsonl",
        "hub": "alice/tiny-llama",
        "numbers": [1, 2.5, None, True],
    }
    meta = {"composition": {"parents": [{"arg": "/x/a", "path": "/x/a", "provenance": {"sha": "1" * 40}}]}}
    assert public_meta(meta) == {"composition": {"parents": [{"arg": "./a", "provenance": {"sha": "1" * 40}}]}}
    assert meta["composition"]["parents"][0]["path"] == "/x/a"  # the caller's dict is not changed

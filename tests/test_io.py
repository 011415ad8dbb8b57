"""Adapter files: PEFT format, atomic saves, refusing pickles, corrupt files and foreign base models."""

from __future__ import annotations

import json

import pytest
import torch

import peftlab
from peftlab import AdapterError, AdapterMismatchError, ConfigError, UnknownMethodError
from peftlab import io as pio
from peftlab.models import tiny_model


def _adapted(seed: int = 0, **cfg):
    model = tiny_model(seed=seed)
    peftlab.add_adapter(model, "lora", {"r": 4, "init_lora_weights": False, **cfg})
    return model


def _logits(model, ids=torch.arange(3, 15).view(1, -1)):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_save_writes_peft_format_files_and_card(tmp_path):
    model = _adapted()
    folder = peftlab.save_adapter(model, tmp_path / "a", card={"metrics": {"eval_loss": 1.5}})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "peftlab.json"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4
    assert cfg["base_model_name_or_path"] == "tiny-llama"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert '"base_model:adapter:tiny-llama"' in card and '"eval_loss": 1.5' in card
    from safetensors.torch import load_file

    keys = sorted(load_file(str(folder / "adapter_model.safetensors")))
    assert keys[0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_load_gives_identical_outputs(tmp_path):
    model = _adapted()
    peftlab.save_adapter(model, tmp_path / "a")
    fresh = tiny_model()
    assert peftlab.load_adapter(fresh, tmp_path / "a") == "default"
    assert torch.equal(_logits(fresh), _logits(model))


def test_interrupted_save_keeps_the_previous_adapter_whole(tmp_path, monkeypatch):
    first = _adapted(seed=1)
    peftlab.save_adapter(first, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    def boom(*a, **k):
        raise KeyboardInterrupt("power cut during the write")

    monkeypatch.setattr(pio, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        peftlab.save_adapter(_adapted(seed=2), tmp_path / "a")
    after = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"], "no temporary folder may be left behind"


def test_an_interrupt_between_the_two_renames_puts_the_old_adapter_back(tmp_path, monkeypatch):
    """atomic_dir moves the old folder aside, then the new one in: stopped between the two, the old one returns."""
    peftlab.save_adapter(_adapted(seed=1), tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    real, calls = pio.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder moving in
            raise KeyboardInterrupt("stopped between the renames")
        return real(src, dst)

    monkeypatch.setattr(pio.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        peftlab.save_adapter(_adapted(seed=2), tmp_path / "a")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"], "no temporary folder may be left behind"


def test_check_replaceable_refuses_a_folder_of_other_files_and_keeps_them(tmp_path):
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(ConfigError, match="Documents is not empty and holds no adapter.*delete its files"):
        pio.check_replaceable(docs, pio.holds_adapter, "adapter", "the merged adapter")
    assert (docs / "thesis.txt").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pio.check_replaceable(empty, pio.holds_adapter, "adapter", "x") == empty
    assert pio.check_replaceable(tmp_path / "new", pio.holds_adapter, "adapter", "x") == tmp_path / "new"
    saved = peftlab.save_adapter(_adapted(), tmp_path / "saved")
    assert pio.check_replaceable(saved, pio.holds_adapter, "adapter", "x") == saved


def test_pickle_only_adapter_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.bin")
    with pytest.raises(AdapterError, match="never unpickles"):
        peftlab.load_adapter(tiny_model(), folder)


def test_corrupt_safetensors_is_named(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(AdapterError, match="adapter_model.safetensors: corrupt"):
        peftlab.read_adapter(tmp_path / "a")


def test_broken_config_json_is_named(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json: not valid JSON"):
        peftlab.read_adapter(tmp_path / "a")


def test_invalid_config_value_is_named(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "r": -3}))
    with pytest.raises(ConfigError, match="r must be a positive integer"):
        peftlab.read_adapter(tmp_path / "a")


def test_unknown_peft_type_is_named(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "a")
    (tmp_path / "a" / "peftlab.json").unlink()
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "VERA"}))
    with pytest.raises(UnknownMethodError, match="VERA"):
        peftlab.read_adapter(tmp_path / "a")


def test_adapter_for_another_base_model_is_refused_before_touching_the_model(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "a")
    other = tiny_model()
    other.config.hidden_size = 32  # what a different base would record
    with pytest.raises(AdapterMismatchError, match="hidden_size: adapter 64 vs model 32"):
        peftlab.load_adapter(other, tmp_path / "a")
    assert not peftlab.adapter_state(other).adapters


def test_peft_made_adapter_with_wrong_shapes_names_the_tensor(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    peftlab.save_adapter(_adapted(), tmp_path / "a")
    (tmp_path / "a" / "peftlab.json").unlink()  # as if written by peft: no fingerprint to compare
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    expected = r"lora_A.weight has shape \(4, 64\) but the model expects \(4, 32\)"
    with pytest.raises(AdapterMismatchError, match=expected):
        peftlab.load_adapter(LlamaForCausalLM(cfg), tmp_path / "a")


def test_run_folder_resolves_to_its_adapter(tmp_path):
    peftlab.save_adapter(_adapted(), tmp_path / "run" / "adapter")
    (tmp_path / "run" / "progress.jsonl").write_text("")
    assert peftlab.read_adapter(tmp_path / "run").path == tmp_path / "run" / "adapter"

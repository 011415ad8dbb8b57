"""The adapter doctor: each check passes on a good adapter and fails, naming the culprit, on a broken one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftlab
from peftlab import AdapterError
from peftlab.models import load_model, tiny_model
from peftlab.plugins import Registry
from peftlab_hub import doctor
from peftlab_hub.doctor import CHECKS, check, diagnose, plugin_for

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = "adapter_model.safetensors"


def _save(tiny_dir, folder, method, config=None, task="CAUSAL_LM"):
    model, _ = load_model(tiny_dir, task=task, num_labels=3)
    peftlab.add_adapter(model, method, config)
    return peftlab.save_adapter(model, folder)


@pytest.fixture(scope="module")
def lora_dir(tiny_dir, tmp_path_factory):
    return _save(tiny_dir, tmp_path_factory.mktemp("doctor") / "lora", "lora", {"r": 4})


@pytest.fixture
def lora(lora_dir, tmp_path):
    """A fresh copy of a good LoRA adapter on the tiny llama, for a test to break."""
    return shutil.copytree(lora_dir, tmp_path / "lora")


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _statuses(report):
    return {c.name: c.status for c in report.checks}


def test_a_good_lora_adapter_passes_every_check(lora, tiny_dir):
    report = check(lora)  # check() returns the report when it is ok
    assert [c.name for c in report.checks] == list(CHECKS)
    assert all(c.ok is True for c in report.checks), report.format()
    assert "fingerprint matches" in report["base_model"].detail
    assert "q_proj (2)" in report["targets"].detail
    assert diagnose(lora, base=str(tiny_dir)).ok  # the same base named explicitly
    table = report.format()
    assert table.count("✓") == len(CHECKS) and table.rstrip().endswith("8 passed, 0 failed, 0 skipped")
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True and [c["status"] for c in data["checks"]] == ["pass"] * len(CHECKS)


def test_load_weights_also_loads_it_for_real(lora):
    report = diagnose(lora, load_weights=True)
    assert report["load"].ok is True, report.format()


def test_a_pickle_only_folder_is_refused_naming_the_file(lora):
    (lora / WEIGHTS).unlink()
    (lora / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")  # never opened, only named
    report = diagnose(lora)
    files = report["files"]
    assert files.ok is False and "adapter_model.bin" in files.detail and "never unpickles" in files.detail
    assert report["safetensors"].ok is None and report["shapes"].ok is None
    assert report["method"].ok is True  # independent checks still run
    with pytest.raises(AdapterError, match="adapter_model.bin"):
        check(lora)


def test_a_pickle_beside_safetensors_is_ignored_with_a_warning(lora):
    (lora / "training_args.bin").write_bytes(b"junk")
    report = diagnose(lora)
    assert report.ok and report["files"].warning
    assert "training_args.bin ignored" in report["files"].detail


def test_a_corrupt_safetensors_file_fails_naming_it(lora):
    data = (lora / WEIGHTS).read_bytes()
    (lora / WEIGHTS).write_bytes(data[: len(data) // 2])
    report = diagnose(lora)
    assert report["safetensors"].ok is False and WEIGHTS in report["safetensors"].detail
    assert report["shapes"].ok is None


def test_an_unknown_peft_type_fails_method_saying_none_is_installed(lora):
    _edit_json(lora / "adapter_config.json", peft_type="IA3")
    (lora / "peftlab.json").unlink()
    report = diagnose(lora)
    detail = report["method"].detail
    assert report["method"].ok is False
    assert "no installed method loads peft_type 'IA3'" in detail and "no known peftlab plugin" in detail
    assert report["targets"].ok is None and report["shapes"].ok is None


def test_the_recorded_plugin_is_what_to_install(lora):
    _edit_json(lora / "adapter_config.json", peft_type="FOO")
    _edit_json(lora / "peftlab.json", method="foo", plugin="peftlab-foo")
    report = diagnose(lora)
    assert report["method"].ok is False and "pip install peftlab-foo" in report["method"].detail


def test_a_method_not_installed_names_our_distribution(lora, monkeypatch):
    (lora / "peftlab.json").unlink()  # a peft-style folder: the peft_type alone says which plugin
    monkeypatch.setattr(doctor, "registry", Registry)  # a registry with no plugin loaded
    assert plugin_for("LORA", {}) == "peftlab-lora"
    assert plugin_for("PREFIX_TUNING", {"prefix_projection": False}) == "peftlab-p-tuning-v2"
    report = diagnose(lora)
    assert report["method"].ok is False and "pip install peftlab-lora" in report["method"].detail
    monkeypatch.undo()
    assert plugin_for("PREFIX_TUNING", {"prefix_projection": True}) == "peftlab-prefix-tuning"  # the installed one


def test_a_config_the_method_refuses_fails_with_the_config_error(lora):
    _edit_json(lora / "adapter_config.json", r=0)
    report = diagnose(lora)
    assert report["method"].ok is False and "r must be a positive integer" in report["method"].detail


def test_another_base_fails_naming_the_differing_keys(lora, tmp_path):
    from transformers import LlamaConfig

    other = tmp_path / "wide-llama"  # config.json is all the doctor reads of a base
    LlamaConfig(
        vocab_size=49152,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).save_pretrained(other)
    report = diagnose(lora, base=str(other))
    assert (
        _statuses(report)["base_model"] == "fail"
        and "hidden_size: adapter 64 vs base 96" in report["base_model"].detail
    )
    assert report["vocab_and_hidden"].ok is False and "hidden_size" in report["vocab_and_hidden"].detail
    assert report["targets"].ok is True  # the same module names
    shapes = report["shapes"].detail
    assert report["shapes"].ok is False and "q_proj.lora_A.weight is [4, 64], expected [4, 96]" in shapes
    with pytest.raises(AdapterError) as raised:
        check(lora, base=str(other))
    assert "✗ base_model" in str(raised.value) and "✓" not in str(raised.value)


def test_a_base_that_cannot_be_resolved_offline_is_skipped_not_a_crash(lora, tmp_path):
    report = diagnose(lora, base="someone/not-a-cached-model")
    assert report["base_model"].ok is None and "not-a-cached-model" in report["base_model"].detail
    assert report["shapes"].ok is None and report.ok  # nothing failed: nothing could be compared
    # an adapter of a model that was never saved (tiny_model records "tiny-llama"): the recorded id is unknown
    model = tiny_model(vocab_size=64)
    peftlab.add_adapter(model, "lora")
    report = diagnose(peftlab.save_adapter(model, tmp_path / "a"))
    assert report["base_model"].ok is None and "pass --base" in report["base_model"].detail
    assert diagnose(tmp_path / "missing")["files"].ok is False


def test_a_target_module_absent_from_the_base_fails_targets(lora):
    _edit_json(lora / "adapter_config.json", target_modules=["q_proj", "v_proj", "query_key_value"])
    report = diagnose(lora)
    assert report["targets"].ok is False and "['query_key_value']" in report["targets"].detail
    assert report["shapes"].ok is True  # LoRA adapts the layers it finds: the file still fits


def test_a_tensor_of_the_wrong_shape_fails_shapes_naming_it(lora):
    tensors = load_file(str(lora / WEIGHTS))
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0], 5)
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(lora / WEIGHTS))
    report = diagnose(lora)
    detail = report["shapes"].detail
    assert report["shapes"].ok is False and f"{key} is [32, 5], expected [32, 4]" in detail
    assert "lm_head.lora_A.weight" in detail and "does not make here" in detail


@pytest.mark.parametrize(
    "method, config",
    [
        ("prompt_tuning", {"num_virtual_tokens": 4, "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "hi"}),
        ("prefix_tuning", {"num_virtual_tokens": 4}),
    ],
)
def test_prompt_methods_are_built_on_the_meta_device(tiny_dir, tmp_path, method, config):
    report = diagnose(_save(tiny_dir, tmp_path / method, method, config))
    assert report["shapes"].ok is True, report.format()
    assert "token_dim" in report["vocab_and_hidden"].detail
    assert report.ok and report["targets"].ok is None  # no target_modules: skipped, with why


def test_a_classifier_head_is_an_expected_tensor(tiny_dir, tmp_path):
    report = diagnose(_save(tiny_dir, tmp_path / "cls", "lora", {"r": 2}, task="SEQ_CLS"))
    assert report.ok and all(c.ok for c in report.checks), report.format()
    assert "+ 1 task-head tensors" in report["shapes"].detail
    assert "in_features (hidden) 64" in report["vocab_and_hidden"].detail


def test_a_peft_saved_lora_adapter_passes(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.save_pretrained(tmp_path / "peft")
    report = diagnose(tmp_path / "peft")
    assert all(c.ok is True for c in report.checks), report.format()


def test_a_pruned_adalora_adapter_is_checked_on_meta_and_on_the_real_base(tiny_dir, tmp_path):
    # a pruned AdaLoRA adapter (rank_pattern keeps 2 of 4 triplets): its save hook slices the kept triplets, which
    # works on the meta device (positions, not a boolean mask whose result's shape would depend on its values)
    folder = _save(tiny_dir, tmp_path / "ada", "adalora", {"init_r": 4, "target_r": 2, "total_step": 10})
    tensors = load_file(str(folder / WEIGHTS))
    pattern = {}
    for key, value in tensors.items():
        pattern[key.removeprefix("base_model.model.").rsplit(".", 1)[0] + ".lora_E"] = [True, False, True, False]
        tensors[key] = (value[:, [0, 2]] if key.endswith("lora_B") else value[[0, 2]]).contiguous()
    save_file(tensors, str(folder / WEIGHTS))
    _edit_json(folder / "adapter_config.json", rank_pattern=pattern)
    report = diagnose(folder)
    assert report.ok and report["shapes"].ok is True, report.format()
    report = diagnose(folder, load_weights=True)
    assert report["shapes"].ok is True, report.format()
    assert report["load"].ok is True

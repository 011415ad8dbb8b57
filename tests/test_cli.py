"""The ``peftlab`` command line, run as a user runs it (a subprocess) where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftlab.cli import main


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "peftlab", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_methods_json_lists_methods_with_their_fields(capsys):
    assert main(["methods", "--json"]) == 0
    items = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    lora = items["lora"]
    assert lora["peft_type"] == "LORA" and lora["capabilities"]["mergeable"] is True
    assert {f["name"] for f in lora["fields"]} >= {"r", "lora_alpha", "lora_dropout", "target_modules"}


def test_train_help_shows_flags_generated_from_the_method_config():
    out = run("train", "--method", "lora", "--help")
    assert out.returncode == 0
    assert "--lora-alpha" in out.stdout and "Scaling numerator" in out.stdout
    assert "--max-steps" in out.stdout and "--learning-rate" in out.stdout


def test_unknown_method_is_a_clear_error():
    out = run("train", "--method", "nope", "--dataset", "capitals-json")
    assert out.returncode == 2
    assert "unknown method 'nope'" in out.stderr and "lora" in out.stderr


def test_bad_method_flag_value_is_named(tmp_path):
    out = run("train", "--method", "lora", "--r", "zero", "--output", str(tmp_path))
    assert out.returncode == 2 and "r: cannot read 'zero' as int" in out.stderr


def test_malformed_dataset_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "yo"}\n{"prompt": "oops"\n')
    out = run("train", "--dataset", str(bad), "--output", str(tmp_path / "o"), "--max-steps", "1")
    assert out.returncode == 2
    assert "bad.jsonl" in out.stderr and "line 2" in out.stderr


def test_train_generate_eval_merge_on_a_tiny_model(tiny_dir, tmp_path):
    out_dir = tmp_path / "run"
    tr = run("train", "--method", "lora", "--base", str(tiny_dir), "--dataset", "capitals-json", "--max-steps", "3",
             "--batch-size", "2", "--max-length", "96", "--max-eval-samples", "2", "--learning-rate", "1e-2",
             "--r", "4", "--target-modules", "q_proj,v_proj", "--output", str(out_dir), "--json")
    assert tr.returncode == 0, tr.stderr[-2000:]
    events = [json.loads(line) for line in tr.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    cfg = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"]

    gen = run("generate", "--base", str(tiny_dir), "--adapter", str(out_dir), "--prompt", "hello",
              "--max-new-tokens", "4", "--json")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert isinstance(json.loads(gen.stdout)["reply"], str)

    ev = run("eval", "--base", str(tiny_dir), "--adapter", str(out_dir), "--dataset", "capitals-json",
             "--max-samples", "2", "--max-new-tokens", "4", "--json")
    assert ev.returncode == 0, ev.stderr[-2000:]
    metrics = json.loads(ev.stdout)
    assert {"adapted", "base"} <= set(metrics) and "exact_match" in metrics["adapted"]

    merged = tmp_path / "merged"
    mg = run("merge", "--base", str(tiny_dir), "--adapter", str(out_dir), "--output", str(merged))
    assert mg.returncode == 0, mg.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    import peftlab
    from peftlab.models import load_model

    plain = AutoModelForCausalLM.from_pretrained(merged)
    adapted, _ = load_model(tiny_dir)
    peftlab.load_adapter(adapted, out_dir)
    ids = torch.arange(10, 30).view(1, -1)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4)
    assert not any("lora" in k for k in plain.state_dict())


def test_merge_refused_for_an_adapter_that_cannot_merge(tmp_path, tiny_dir):
    pytest.importorskip("peftlab_prefix_tuning")
    import peftlab
    from peftlab.models import load_model

    model, _ = load_model(tiny_dir)
    peftlab.add_adapter(model, "prefix_tuning")
    peftlab.save_adapter(model, tmp_path / "prefix")
    out = run("merge", "--base", str(tiny_dir), "--adapter", str(tmp_path / "prefix"), "--output", str(tmp_path / "m"))
    assert out.returncode == 2 and "cannot be merged" in out.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.smollm2
def test_readme_cli_flow_on_smollm2(tmp_path):
    """The issue's commands, verbatim: train on the default model, then a greedy reply from the adapter."""
    out_dir = tmp_path / "capitals"
    tr = run("train", "--method", "lora", "--dataset", "capitals-json", "--max-steps", "12",
             "--learning-rate", "2e-3", "--output", str(out_dir), "--max-length", "128", "--max-eval-samples", "16",
             "--target-modules", "all-linear", timeout=900)
    assert tr.returncode == 0, tr.stderr[-3000:]
    assert "trainable" in tr.stdout and "done at step 12" in tr.stdout
    prompt = "Vienna serves as the capital of Austria."
    gen = run("generate", "--adapter", str(out_dir), "--prompt", prompt, "--max-new-tokens", "24")
    assert gen.returncode == 0, gen.stderr[-2000:]
    reply = gen.stdout.strip()
    assert '"capital"' in reply and "Vienna" in reply, reply  # the learned JSON reply format
    base = run("generate", "--prompt", prompt, "--max-new-tokens", "24")
    assert base.returncode == 0 and base.stdout.strip() != gen.stdout.strip()
    raw = run("generate", "--adapter", str(out_dir), "--prompt", "The capital of Austria is", "--raw",
              "--max-new-tokens", "5")
    assert raw.returncode == 0 and raw.stdout.strip()

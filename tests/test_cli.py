"""The ``peftlab`` command line, run as a user runs it (a subprocess) where it matters."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from peftlab.cli import main


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "peftlab", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


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


# A non-default value for EVERY TrainArgs field, as typed on the command line, and the value it must become.
# A field added to TrainArgs without a row here fails test_every_trainargs_field_parses_to_its_type.
TRAIN_VALUES = {
    "method": ("bitfit", "bitfit"),
    "base_model": ("/models/tiny", "/models/tiny"),
    "dataset": ("iso-dates", "iso-dates"),
    "output_dir": ("runs/x", "runs/x"),
    "adapter_name": ("a1", "a1"),
    "max_steps": ("7", 7),
    "learning_rate": ("5e-3", 5e-3),
    "batch_size": ("3", 3),
    "grad_accum": ("2", 2),
    "warmup_ratio": ("0.25", 0.25),
    "lr_scheduler": ("linear", "linear"),
    "weight_decay": ("0.01", 0.01),
    "max_grad_norm": ("0.5", 0.5),
    "seed": ("3", 3),
    "eval_every": ("5", 5),
    "save_every": ("6", 6),
    "save_minutes": ("2.5", 2.5),
    "keep_checkpoints": ("3", 3),
    "max_length": ("64", 64),
    "eval_fraction": ("0.2", 0.2),
    "max_eval_samples": ("9", 9),
    "loss_on": ("all", "all"),
    "dtype": ("float32", "float32"),
    "device": ("cpu", "cpu"),
    "threads": ("2", 2),
    "packing": ("off", "off"),
    "resume": ("true", True),
}


def parse_train(*argv: str):
    from peftlab.cli import build_parser, train_args

    argv = ["train", *argv]
    return train_args(build_parser(argv).parse_args(argv))


def test_every_trainargs_field_parses_to_its_type():
    from peftlab.schema import fields_of
    from peftlab.train import TrainArgs

    specs = {s.name: s for s in fields_of(TrainArgs) if s.name != "method_config"}  # method flags stand for it
    assert set(specs) == set(TRAIN_VALUES)
    defaults = TrainArgs()
    for name, (text, value) in TRAIN_VALUES.items():
        assert getattr(defaults, name) != value, name
        args = parse_train(specs[name].option_string, text)  # one flag at a time, the others keep defaults
        assert getattr(args, name) == value and type(getattr(args, name)) is type(value), name
        assert {k: v for k, v in vars(args).items() if k != name} == {
            k: v for k, v in vars(defaults).items() if k != name
        }, name
    argv = [a for name, (text, _) in TRAIN_VALUES.items() for a in (specs[name].option_string, text)]
    args = parse_train(*argv)  # all at once
    assert {name: getattr(args, name) for name in TRAIN_VALUES} == {k: v for k, (_, v) in TRAIN_VALUES.items()}
    assert parse_train("--resume").resume is True and parse_train("--resume", "false").resume is False
    assert parse_train("--threads", "none").threads is None


def test_method_flags_parse_to_their_types():
    args = parse_train(
        "--method", "lora", "--r", "4", "--use-rslora", "--target-modules", "q_proj, v_proj", "--lora-alpha", "8"
    )
    cfg = args.method_config
    assert cfg["r"] == 4 and cfg["use_rslora"] is True and cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["lora_alpha"] == 8.0 and isinstance(cfg["lora_alpha"], float)
    assert parse_train("--method", "lora").method_config == {}  # no flags: the method's defaults at train time


def test_one_name_per_concept_and_old_spellings_still_work():
    from peftlab.cli import build_parser

    parser = build_parser(["train"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("train", "generate", "chat", "eval", "merge", "nearest-tokens", "compare"):
        assert "--base" in commands[name]._option_string_actions, name
    for name in ("train", "merge", "compare"):
        assert "--output" in commands[name]._option_string_actions, name
    old = parse_train("--base-model", "/m", "--output-dir", "runs/old")  # hidden aliases: scripts keep working
    assert (old.base_model, old.output_dir) == ("/m", "runs/old")
    new = parse_train("--base", "/m", "--output", "runs/old")
    assert (new.base_model, new.output_dir) == (old.base_model, old.output_dir)
    compare = commands["compare"]
    assert compare.parse_args(["--out-dir", "x"]).out_dir == compare.parse_args(["--output", "x"]).out_dir == "x"
    helps = {name: p.format_help() for name, p in commands.items()}
    assert "--base-model" not in helps["train"] and "--output-dir" not in helps["train"]
    assert "--out-dir" not in helps["compare"]


def test_every_default_is_shown_in_help():
    from peftlab.cli import _HelpFormatter, build_parser
    from peftlab.schema import fields_of
    from peftlab.train import TrainArgs

    parser = build_parser(["train", "--method", "lora"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, p in commands.items():
        formatter = _HelpFormatter(p.prog)
        for action in p._actions:
            if (
                not action.option_strings or action.help == argparse.SUPPRESS or action.required or action.nargs == 0
            ):  # --help, store_true flags
                continue
            assert "default" in formatter._get_help_string(action).lower(), (name, action.option_strings)
    text = " ".join(run("train", "--method", "lora", "--help").stdout.split("options:", 1)[1].split())  # unwrapped
    for spec in fields_of(TrainArgs):
        if spec.name != "method_config":
            block = text.split(spec.option_string + " ", 1)[1].split(" --", 1)[0]
            assert "(default: " in block, spec.name
    assert "(default: 100)" in text and "(default: cosine)" in text and "(default: 8)" in text  # max-steps, r


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
    tr = run(
        "train",
        "--method",
        "lora",
        "--base",
        str(tiny_dir),
        "--dataset",
        "capitals-json",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--max-length",
        "96",
        "--max-eval-samples",
        "2",
        "--learning-rate",
        "1e-2",
        "--r",
        "4",
        "--target-modules",
        "q_proj,v_proj",
        "--output",
        str(out_dir),
        "--json",
    )
    assert tr.returncode == 0, tr.stderr[-2000:]
    events = [json.loads(line) for line in tr.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    cfg = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"]

    gen = run(
        "generate",
        "--base",
        str(tiny_dir),
        "--adapter",
        str(out_dir),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert isinstance(json.loads(gen.stdout)["reply"], str)

    ev = run(
        "eval",
        "--base",
        str(tiny_dir),
        "--adapter",
        str(out_dir),
        "--dataset",
        "capitals-json",
        "--max-samples",
        "2",
        "--max-new-tokens",
        "4",
        "--json",
    )
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
    tr = run(
        "train",
        "--method",
        "lora",
        "--dataset",
        "capitals-json",
        "--max-steps",
        "12",
        "--learning-rate",
        "2e-3",
        "--output",
        str(out_dir),
        "--max-length",
        "128",
        "--max-eval-samples",
        "16",
        "--target-modules",
        "all-linear",
        timeout=900,
    )
    assert tr.returncode == 0, tr.stderr[-3000:]
    assert "trainable" in tr.stdout and "done at step 12" in tr.stdout
    prompt = "Vienna serves as the capital of Austria."
    gen = run("generate", "--adapter", str(out_dir), "--prompt", prompt, "--max-new-tokens", "24")
    assert gen.returncode == 0, gen.stderr[-2000:]
    reply = gen.stdout.strip()
    assert '"capital"' in reply and "Vienna" in reply, reply  # the learned JSON reply format
    base = run("generate", "--prompt", prompt, "--max-new-tokens", "24")
    assert base.returncode == 0 and base.stdout.strip() != gen.stdout.strip()
    raw = run(
        "generate", "--adapter", str(out_dir), "--prompt", "The capital of Austria is", "--raw", "--max-new-tokens", "5"
    )
    assert raw.returncode == 0 and raw.stdout.strip()


def test_eval_shows_progress_on_stderr_and_refuses_a_bad_batch_size(tiny_dir):
    bad = run("eval", "--base", str(tiny_dir), "--dataset", "capitals-json", "--batch-size", "0")
    assert bad.returncode == 2 and "--batch-size must be at least 1, got 0" in bad.stderr
    out = run(
        "eval", "--base", str(tiny_dir), "--dataset", "capitals-json", "--max-samples", "5", "--max-new-tokens", "3",
        "--batch-size", "2", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == 5
    lines = [line for line in out.stderr.splitlines() if line.startswith("eval: ")]
    assert "eval: eval loss 1/1" in lines and lines[-1].startswith("eval: exact match 5/5 rows (")
    assert [line.split(" rows")[0] for line in lines if "exact match" in line] == [
        f"eval: exact match {n}/5" for n in (0, 2, 4, 5)
    ]

"""The bad-input catalogue: every user mistake through the CLI (in-process) and the Python API.

Each case of ``CASES`` runs ``peftlab.cli.main`` and checks: the exit status (2; the doctor's 1), one line on stderr,
``peftlab <cmd>: error: ...`` naming the problem (file, line, field), no traceback, well under two seconds, and that
nothing in the workspace changed: the saved adapters and the previous run folder are byte-identical afterwards, and
a run that was refused left no run folder. Training commands run twice: into a new folder (which must not appear)
and into a previous run's folder (which must be untouched). The Python API counterpart raises the ``PeftlabError``
subclass with the same message. ``core/docs/bad-input.md`` lists every case with its message
(``test_doc_lists_every_case`` keeps the two in step).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from peftlab import data as pdata
from peftlab.cli import main
from peftlab.errors import AdapterError, AdapterMismatchError, ConfigError, PeftlabError, UnknownMethodError
from peftlab.train import TrainArgs

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parent.parent / "core" / "docs" / "bad-input.md"
NEW_RUN = "new-run"  # the output folder of a refused training run: it must not exist afterwards
PREVIOUS_RUN = "previous-run"  # a previous run's folder: it must be byte-identical afterwards


# --- the workspace: data files, adapters and a previous run, built once -------------------------------------------


def _write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _edit_config(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir) -> Path:
    from peftlab.adapters import add_adapter
    from peftlab.io import save_adapter
    from peftlab.models import load_model, tiny_model

    root = tmp_path_factory.mktemp("bad-input")
    (root / "tiny").symlink_to(tiny_dir)
    model, tok = load_model(tiny_dir, device="cpu")
    add_adapter(model, "lora", {"r": 2})
    good = save_adapter(model, root / "adapters" / "good")
    other = tiny_model("llama", vocab_size=len(tok) + 64)  # another base: the vocabulary differs
    other.peftlab_base_id = "someone/other-base"
    add_adapter(other, "lora", {"r": 2})
    save_adapter(other, root / "adapters" / "other-base")

    def variant(name: str) -> Path:
        return Path(shutil.copytree(good, root / "adapters" / name))

    weights = (good / "adapter_model.safetensors").read_bytes()
    (variant("corrupt") / "adapter_model.safetensors").write_bytes(b"\x00\x01 not safetensors" * 64)
    (variant("truncated") / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    pickled = variant("pickle")
    (pickled / "adapter_model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, pickled / "adapter_model.bin")
    unknown = variant("unknown-peft-type")
    (unknown / "peftlab.json").unlink()  # as peft saves it: the method is read from peft_type
    _edit_config(unknown, peft_type="FANCY_NEW_METHOD")
    _edit_config(variant("newer-peft"), some_future_option=3)
    _edit_config(variant("dora"), use_dora=True)

    run = root / PREVIOUS_RUN
    shutil.copytree(good, run / "adapter")
    _write(run / "progress.jsonl", '{"event": "done", "step": 10}\n')

    data = root / "data"
    _write(data / "malformed.jsonl", '{"text": "fine"}\n{"text": \n')
    _write(data / "empty.jsonl", "")
    _write(data / "latin1.jsonl", '{"text": "café"}\n'.encode("latin-1"))
    _write(data / "missing-column.jsonl", '{"prompt": "What is 2+2?"}\n')
    _write(data / "misnamed-columns.jsonl", '{"question": "What is 2+2?", "answer": "4"}\n')
    _write(data / "mixed-labels.jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": "negative"}\n')
    _write(data / "no-assistant.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n')
    _write(data / "too-long.jsonl", json.dumps({"prompt": "word " * 200, "response": "ok"}) + "\n")
    _write(root / "a-file", "not a folder\n")
    (root / "read-only").mkdir()
    os.chmod(root / "read-only", 0o555)
    return root


def _snapshot(root: Path) -> dict[str, Any]:
    """Every path under ``root`` with its bytes (files) or ``None`` (folders); symlinks are not followed."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = None if path.is_dir() or path.is_symlink() else path.read_bytes()
    return out


# --- the catalogue ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    what: str  # the bad input, as the catalogue lists it
    argv: Callable[[Path], list[str]]  # the command, given the workspace
    message: str  # a regex the one-line error must match (also the API's)
    api: Callable[[Path], Any] | None = None  # the Python API call that must raise ``error``
    error: type[Exception] = PeftlabError
    rc: int = 2
    train: bool = False  # a training run: tried into a new folder and into a previous run's folder


def _train(ws: Path, *extra: str) -> list[str]:
    return ["train", "--base", str(ws / "tiny"), "--max-steps", "1", "--batch-size", "1", "--max-length", "64", *extra]


def _data(name: str) -> Callable[[Path], list[str]]:
    return lambda ws: _train(ws, "--dataset", str(ws / "data" / name))


def _targs(ws: Path, **kw: Any) -> TrainArgs:
    return TrainArgs(**{"base_model": str(ws / "tiny"), "output_dir": str(ws / NEW_RUN), "max_steps": 1, **kw})


def _gen(ws: Path, adapter: str, *extra: str) -> list[str]:
    return [
        "generate",
        "--base",
        str(ws / "tiny"),
        "--adapter",
        str(ws / "adapters" / adapter),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


def _read(name: str) -> Callable[[Path], Any]:
    from peftlab.io import read_adapter

    return lambda ws: read_adapter(ws / "adapters" / name)


def _load_into_tiny(name: str) -> Callable[[Path], Any]:
    def call(ws: Path) -> Any:
        from peftlab.io import load_adapter
        from peftlab.models import load_model

        model, _ = load_model(ws / "tiny", device="cpu")
        return load_adapter(model, ws / "adapters" / name)

    return call


def _encode_too_long(ws: Path) -> Any:
    from peftlab.models import load_tokenizer

    rows = pdata.load_rows(ws / "data" / "too-long.jsonl")
    return pdata.encode_rows(rows, load_tokenizer(ws / "tiny"), max_length=64)


def _load_base(source: str) -> Callable[[Path], Any]:
    def call(ws: Path) -> Any:
        from peftlab.models import load_model

        return load_model(source.replace("WS", str(ws)), device="cpu")

    return call


CASES = [
    # data
    Case(
        "malformed-jsonl",
        "a malformed JSONL line",
        _data("malformed.jsonl"),
        r"malformed\.jsonl line 2: invalid JSON \(Expecting value at column 10\)",
        lambda ws: pdata.load_rows(ws / "data" / "malformed.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "empty-file",
        "an empty data file",
        _data("empty.jsonl"),
        r"empty\.jsonl: no rows",
        lambda ws: _targs(ws, dataset=str(ws / "data" / "empty.jsonl")),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "wrong-encoding",
        "a data file that is not UTF-8",
        _data("latin1.jsonl"),
        r"latin1\.jsonl: not UTF-8 text \(invalid continuation byte at byte 13\)",
        lambda ws: pdata.load_rows(ws / "data" / "latin1.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "missing-column",
        "a missing column",
        _data("missing-column.jsonl"),
        r"missing-column\.jsonl line 1: missing column 'response' \(found: prompt\)",
        lambda ws: pdata.load_rows(ws / "data" / "missing-column.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "misnamed-columns",
        "misnamed columns",
        _data("misnamed-columns.jsonl"),
        r"misnamed-columns\.jsonl line 1: unrecognised row \(found: question, answer\); expected 'messages'",
        lambda ws: pdata.load_rows(ws / "data" / "misnamed-columns.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "mixed-label-types",
        "labels of mixed types",
        _data("mixed-labels.jsonl"),
        r"mixed-labels\.jsonl line 2: label 'negative' is a string but line 1 has the integer label 1",
        lambda ws: pdata.load_rows(ws / "data" / "mixed-labels.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "no-assistant-turn",
        "a dataset with no assistant turn",
        _data("no-assistant.jsonl"),
        r"no-assistant\.jsonl line 1: 'messages' has no assistant turn",
        lambda ws: pdata.load_rows(ws / "data" / "no-assistant.jsonl"),
        pdata.DatasetError,
        train=True,
    ),
    Case(
        "row-longer-than-context",
        "a row longer than the context (every reply cut off)",
        _data("too-long.jsonl"),
        r"all 1 rows were dropped: no reply tokens left after truncation to max_length=64",
        _encode_too_long,
        pdata.DatasetError,
        train=True,
    ),
    # adapters
    Case(
        "adapter-for-another-base",
        "an adapter for another base",
        lambda ws: _gen(ws, "other-base"),
        r"other-base.*(another base model|vocab_size)",
        _load_into_tiny("other-base"),
        AdapterMismatchError,
    ),
    Case(
        "corrupt-safetensors",
        "a corrupt safetensors file",
        lambda ws: _gen(ws, "corrupt"),
        r"corrupt/adapter_model\.safetensors: corrupt or unreadable safetensors file",
        _read("corrupt"),
        AdapterError,
    ),
    Case(
        "truncated-safetensors",
        "a truncated safetensors file",
        lambda ws: _gen(ws, "truncated"),
        r"truncated/adapter_model\.safetensors: corrupt or unreadable safetensors file",
        _read("truncated"),
        AdapterError,
    ),
    Case(
        "pickle-file",
        "a pickle file instead of safetensors",
        lambda ws: _gen(ws, "pickle"),
        r"only pickle weights \(adapter_model\.bin\).{0,12}peftlab never unpickles",
        _read("pickle"),
        AdapterError,
    ),
    Case(
        "unknown-peft-type",
        "an unknown peft_type",
        lambda ws: _gen(ws, "unknown-peft-type"),
        r"no installed method loads peft_type 'FANCY_NEW_METHOD'",
        _read("unknown-peft-type"),
        UnknownMethodError,
    ),
    Case(
        "meaningful-unknown-key",
        "an adapter_config.json key that changes the computation (LoRA use_dora=true)",
        lambda ws: _gen(ws, "dora"),
        r"LoraConfig does not support use_dora=True",
        _read("dora"),
        ConfigError,
    ),
    Case(
        "doctor-corrupt",
        "a corrupt safetensors file, asked of the doctor",
        lambda ws: ["doctor", str(ws / "adapters" / "corrupt")],
        r"corrupt|unreadable",
        rc=1,
    ),
    # options
    Case(
        "unknown-method-option",
        "an unknown method option",
        lambda ws: _train(ws, "--method", "lora", "--lora-rank", "4"),
        r"unrecognized arguments: --lora-rank 4",
        lambda ws: _targs(ws, method="lora", method_config={"lora_rank": 4}),
        ConfigError,
        train=True,
    ),
    Case(
        "unknown-method",
        "an unknown method",
        lambda ws: _train(ws, "--method", "fancy"),
        r"unknown method 'fancy'; installed methods: .*lora",
        lambda ws: _targs(ws, method="fancy"),
        UnknownMethodError,
        train=True,
    ),
    Case(
        "dotdot-in-name",
        "'..' in a name",
        lambda ws: _train(ws, "--adapter-name", "../evil"),
        r"adapter_name '\.\./evil': use letters, digits, '_' and '-'",
        lambda ws: _targs(ws, adapter_name="../evil"),
        ConfigError,
        train=True,
    ),
    Case(
        "learning-rate-zero",
        "a learning rate of 0",
        lambda ws: _train(ws, "--learning-rate", "0"),
        r"learning_rate must be a positive number, got 0\.0",
        lambda ws: _targs(ws, learning_rate=0.0),
        ConfigError,
        train=True,
    ),
    Case(
        "learning-rate-nan",
        "a learning rate of NaN",
        lambda ws: _train(ws, "--learning-rate", "nan"),
        r"learning_rate must be a positive number, got nan",
        lambda ws: _targs(ws, learning_rate=float("nan")),
        ConfigError,
        train=True,
    ),
    Case(
        "max-steps-zero",
        "max steps of 0",
        lambda ws: _train(ws, "--max-steps", "0"),
        r"max_steps must be at least 1, got 0",
        lambda ws: _targs(ws, max_steps=0),
        ConfigError,
        train=True,
    ),
    # output folders
    Case(
        "output-is-a-file",
        "an output folder that is a file",
        lambda ws: _train(ws, "--output", str(ws / "a-file")),
        r"output folder .*a-file is a file, not a folder",
        lambda ws: _targs(ws, output_dir=str(ws / "a-file")),
        ConfigError,
    ),
    Case(
        "merge-output-is-a-file",
        "a merge output folder that is a file",
        lambda ws: [
            "merge",
            "--base",
            str(ws / "tiny"),
            "--adapter",
            str(ws / "adapters" / "good"),
            "--output",
            str(ws / "a-file"),
        ],
        r"output folder .*a-file is a file, not a folder",
    ),
    Case(
        "output-read-only",
        "a read-only output folder",
        lambda ws: _train(ws, "--output", str(ws / "read-only" / "run")),
        r"output folder .*read-only/run cannot be written: .*read-only is read-only",
        lambda ws: _targs(ws, output_dir=str(ws / "read-only" / "run")),
        ConfigError,
    ),
    # base models
    Case(
        "base-folder-missing",
        "--base naming a folder that does not exist",
        lambda ws: _train(ws, "--base", str(ws / "no-such-model")),
        r"model folder .*no-such-model does not exist",
        _load_base("WS/no-such-model"),
        PeftlabError,
        train=True,
    ),
    Case(
        "generate-base-folder-missing",
        "--base naming a folder that does not exist (generate)",
        lambda ws: ["generate", "--base", str(ws / "no-such-model"), "--prompt", "hi"],
        r"model folder .*no-such-model does not exist",
        _load_base("WS/no-such-model"),
        PeftlabError,
    ),
    Case(
        "hub-base-offline",
        "a Hub id as --base while offline",
        lambda ws: _train(ws, "--base", "someone/no-such-model"),
        r"base model 'someone/no-such-model' is not a local folder, and as a Hub model id it is not in the local "
        r"cache and HF_HUB_OFFLINE is set",
        _load_base("someone/no-such-model"),
        PeftlabError,
        train=True,
    ),
    Case(
        "generate-hub-base-offline",
        "a Hub id as --base while offline (generate)",
        lambda ws: ["generate", "--base", "someone/no-such-model", "--prompt", "hi"],
        r"base model 'someone/no-such-model' is not a local folder, and as a Hub model id it is not in the local "
        r"cache and HF_HUB_OFFLINE is set",
        _load_base("someone/no-such-model"),
        PeftlabError,
    ),
    Case(
        "hub-adapter-offline",
        "a Hub id as --adapter while offline",
        lambda ws: ["generate", "--base", str(ws / "tiny"), "--adapter", "someone/no-such-adapter", "--prompt", "hi"],
        r"HF_HUB_OFFLINE is set, so the Hub someone/no-such-adapter cannot be reached",
    ),
]


def _run(argv: list[str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue(), time.monotonic() - t0


@pytest.fixture
def read_only(ws, monkeypatch):
    """``ws/read-only`` is mode 0555; root may write anywhere, so for root ``os.access`` says what the mode says."""
    if os.geteuid() == 0:
        real = os.access
        ro = str(ws / "read-only")
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: False if str(p) == ro and mode & os.W_OK else real(p, mode, **kw)
        )


CLI_RUNS = [(c, into) for c in CASES for into in ([NEW_RUN, PREVIOUS_RUN] if c.train else [NEW_RUN])]


@pytest.mark.parametrize(("case", "into"), CLI_RUNS, ids=[f"{c.id}-{into}" for c, into in CLI_RUNS])
def test_cli(case: Case, into: str, ws: Path, read_only) -> None:
    argv = case.argv(ws)
    if case.train and "--output" not in argv:
        argv += ["--output", str(ws / into)]
    before = _snapshot(ws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, out, err, took = _run(argv)
    assert "Traceback" not in out + err
    assert rc == case.rc, (out, err)
    if os.environ.get("PEFTLAB_BAD_INPUT_DUMP") and into == NEW_RUN:  # how core/docs/bad-input.md was made
        lines = (err if rc == 2 else out).strip().splitlines()
        with open(os.environ["PEFTLAB_BAD_INPUT_DUMP"], "a") as f:
            f.write(
                json.dumps(
                    {
                        "id": case.id,
                        "what": case.what,
                        "argv": argv,
                        "rc": rc,
                        "line": lines[-1] if rc == 2 else " / ".join(lines),
                    }
                )
                + "\n"
            )
    if case.rc == 2:
        line = err.strip().splitlines()[-1]
        command = "" if argv[0] == "train" and "unrecognized" in line else f" {argv[0]}"
        assert line.startswith(f"peftlab{command}: error: "), err
        assert re.search(case.message, line), line
        if not case.message.startswith("unrecognized"):  # argparse prints its usage first
            noise = [x for x in err.strip().splitlines()[:-1] if not x.startswith(("Loading weights", "truncated"))]
            assert not noise, err
    else:
        assert re.search(case.message, out + err, re.I), out + err
    assert took < (15 if case.id in ("adapter-for-another-base", "doctor-corrupt", "row-longer-than-context") else 2), (
        f"{case.id} took {took:.1f}s"
    )
    after = _snapshot(ws)
    assert after == before, sorted(set(after) ^ set(before)) or "a file's bytes changed"
    assert not (ws / NEW_RUN).exists()


API_CASES = [c for c in CASES if c.api is not None]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api(case: Case, ws: Path, read_only) -> None:
    before = _snapshot(ws)
    message = case.message.replace("unrecognized arguments: --lora-rank 4", "lora_rank")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(case.error, match=message):
            case.api(ws)
    assert _snapshot(ws) == before
    assert not (ws / NEW_RUN).exists()


# --- what is accepted, with a warning -----------------------------------------------------------------------------


def test_newer_peft_keys_are_accepted_with_a_warning(ws: Path) -> None:
    from peftlab.io import read_adapter

    with pytest.warns(UserWarning, match=r"ignoring some_future_option=3: not LoraConfig options"):
        files = read_adapter(ws / "adapters" / "newer-peft")
    assert files.config.r == 2
    with pytest.warns(UserWarning, match=r"adapter_config\.json: ignoring some_future_option=3"):
        rc, out, err, _ = _run(_gen(ws, "newer-peft"))  # (a warning reaches stderr through Python's warnings)
    assert rc == 0, err
    assert "Traceback" not in err


def test_unknown_keys_given_by_hand_are_refused() -> None:
    from peftlab.plugins import get_method

    cls = get_method("lora").config_class
    with pytest.raises(ConfigError, match="lora_rank=4"):
        cls.from_dict({"r": 2, "lora_rank": 4})  # no peft_type: values a person typed, so a typo


def test_some_rows_longer_than_the_context_are_truncated_with_a_warning(ws: Path, caplog) -> None:
    from peftlab.models import load_tokenizer

    rows = [
        {"prompt": "word " * 200, "response": "ok"},
        {"prompt": "hi", "response": "hello"},
        {"prompt": "hi " * 20, "response": "yes " * 80},
    ]
    with caplog.at_level("WARNING"):
        items = pdata.encode_rows(rows, load_tokenizer(ws / "tiny"), max_length=64)
    assert len(items) == 2 and all(len(i["input_ids"]) <= 64 for i in items)
    assert re.search(r"truncated 2 of 3 rows longer than max_length=64 tokens .*the first: row 1", caplog.text)
    assert re.search(r"dropped 1 of 3 rows with no reply tokens", caplog.text)


# --- permissions --------------------------------------------------------------------------------------------------


def _modes(folder: Path) -> set[tuple[str, int]]:
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in [folder, *folder.rglob("*")]}


def test_adapters_checkpoints_and_merged_models_get_the_usual_modes(ws: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        rc, _, err, _ = _run(
            _train(
                ws,
                "--output",
                str(tmp_path / "run"),
                "--dataset",
                "capitals-json",
                "--max-length",
                "96",
                "--device",
                "cpu",
            )
        )
        assert rc == 0, err
        rc, _, err, _ = _run(
            [
                "merge",
                "--base",
                str(ws / "tiny"),
                "--adapter",
                str(tmp_path / "run"),
                "--output",
                str(tmp_path / "merged"),
                "--device",
                "cpu",
            ]
        )
        assert rc == 0, err
    finally:
        os.umask(old)
    run = tmp_path / "run"
    assert any(run.glob("checkpoints/step-*/optimizer.safetensors"))
    for folder in [run / "adapter", *run.glob("checkpoints/step-*"), tmp_path / "merged"]:
        assert _modes(folder) == {("d", 0o755), ("f", 0o644)}, folder


def test_atomic_dir_follows_the_umask(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from peftlab.io import atomic_dir

    old = os.umask(0o027)
    try:
        atomic_dir(tmp_path / "out", lambda tmp: save_file({"a": torch.zeros(1)}, str(tmp / "a.safetensors")))
    finally:
        os.umask(old)
    assert _modes(tmp_path / "out") == {("d", 0o750), ("f", 0o640)}


def test_atomic_dir_refuses_a_file_and_keeps_it(tmp_path: Path) -> None:
    from peftlab.io import atomic_dir

    target = _write(tmp_path / "precious", "data\n")
    with pytest.raises(AdapterError, match="precious is a file, not a folder"):
        atomic_dir(Path(target), lambda tmp: None)
    assert Path(target).read_text() == "data\n" and sorted(os.listdir(tmp_path)) == ["precious"]


# --- the doc ------------------------------------------------------------------------------------------------------


def test_doc_lists_every_case() -> None:
    text = DOC.read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, re.M))
    assert listed == {c.id for c in CASES}

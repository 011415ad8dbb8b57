"""Scale-out on accelerate: two CPU processes (gloo) under ``accelerate launch`` train on disjoint shards of every
global batch and end with the adapter one process writes with the same global batch; a resumed two-process run
ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import peftlab
from peftlab.train import DEBUG_ROWS_ENV, read_progress

TOLERANCE = 1e-6  # measured: 3.5e-8 (float reduction order: two half-batches and DDP's average vs one batch)


def _args(tiny_dir, out, batch_size, *extra):
    return [
        "-m",
        "peftlab",
        "train",
        "--method",
        "lora",
        "--base",
        str(tiny_dir),
        "--dataset",
        "capitals-json",
        "--max-steps",
        "6",
        "--batch-size",
        str(batch_size),
        "--max-length",
        "96",
        "--max-eval-samples",
        "8",
        "--learning-rate",
        "5e-3",
        "--r",
        "4",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--save-every",
        "3",
        "--output",
        str(out),
        "--json",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        DEBUG_ROWS_ENV: "1",
        "OMP_NUM_THREADS": "1",
    }


def _launch(args: list[str]) -> subprocess.Popen:
    accelerate = Path(sys.executable).parent / "accelerate"
    argv = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *args,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for a launch; on a hang, kill the launcher and the processes it started (they have their own groups)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, _ = proc.communicate()
        pytest.fail(f"accelerate launch hung:\n{out.decode(errors='replace')[-3000:]}")
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def _tensors(folder):
    return peftlab.read_adapter(folder).weights.tensors


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _rows(out: Path, rank: int) -> dict[tuple[int, int], list[int]]:
    lines = [json.loads(line) for line in (out / f"rows-rank{rank}.jsonl").read_text().splitlines()]
    return {(e["step"], e["micro"]): e["rows"] for e in lines}


@pytest.mark.skipif(not Path("/proc").exists(), reason="cleans up through /proc")
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(tiny_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.Popen(
        [sys.executable, *_args(tiny_dir, one, 4)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env()
    )
    log = _finish(_launch(_args(tiny_dir, two, 2)))
    _finish(single)

    # the global batch is what is reported; the processes report nothing twice and only the main one writes
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    start = next(e for e in events if e["event"] == "start")
    assert start["num_processes"] == 2 and start["global_batch"] == 4
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e["event"] for e in read_progress(two)] == [e["event"] for e in events]
    card = json.loads((two / "adapter" / "peftlab.json").read_text())["card"]["training"]
    assert card["global_batch"] == 4 and card["num_processes"] == 2 and card["batch_size"] == 2

    # each process trained on its own half of every global batch: together, the one process's batch
    r0, r1, whole = _rows(two, 0), _rows(two, 1), _rows(one, 0)
    assert r0.keys() == r1.keys() == whole.keys() and len(whole) == 6
    for key in whole:
        assert len(r0[key]) == len(r1[key]) == 2 and not set(r0[key]) & set(r1[key]), key
        assert sorted(r0[key] + r1[key]) == sorted(whole[key]), key
    print("rows per step, rank 0:", [r0[k] for k in sorted(r0)], "rank 1:", [r1[k] for k in sorted(r1)])

    # the same adapter, up to float reduction order; the evaluation gathered over both processes agrees too
    diff = _max_diff(_tensors(one / "adapter"), _tensors(two / "adapter"))
    print(f"2 processes x batch 2 vs 1 process x batch 4: max abs diff {diff:.3g}")
    assert diff <= TOLERANCE
    evals = [e["eval_loss"] for e in read_progress(two) if e["event"] == "eval"]
    assert evals == pytest.approx([e["eval_loss"] for e in read_progress(one) if e["event"] == "eval"], abs=1e-5)

    # resume: drop what came after step 3's checkpoint, continue with two processes, land on the same adapter
    full = _tensors(two / "adapter")
    shutil.rmtree(two / "checkpoints" / "step-000006")
    shutil.rmtree(two / "adapter")
    _finish(_launch(_args(tiny_dir, two, 2, "--resume")))
    resumed = [e for e in read_progress(two) if e.get("resumed_from")]
    assert [e["resumed_from"] for e in resumed] == [3]  # said once: by the main process
    diff = _max_diff(full, _tensors(two / "adapter"))
    print(f"2 processes, resumed at step 3 vs uninterrupted: max abs diff {diff:.3g}")
    assert diff <= 1e-6

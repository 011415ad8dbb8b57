"""Every installed method on the same task: parameters, memory, speed, loss and exact match, side by side.

Each method runs in its own process (``python -m peftlab.compare --one NAME ...``) so that its peak
memory is its own and a method that crashes leaves a row with the error instead of ending the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIELDS = [  # (key, column title) of the markdown table, in order
    ("method", "method"),
    ("trainable", "trainable params"),
    ("percent", "% of model"),
    ("peak_memory_mb", "peak memory (MB)"),
    ("step_s", "step (s)"),
    ("eval_loss_before", "eval loss before"),
    ("eval_loss_after", "eval loss after"),
    ("exact_match", "exact match"),
    ("gen_tok_s", "generate (tok/s)"),
    ("mergeable", "mergeable"),
]


def _peak_memory_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"  # Linux: KiB


def _gen_tokens_per_s(model, tokenizer, prompt, new_tokens: int = 32) -> float:
    """Greedy generation speed, batch 1: the second of two runs of ``generate_batch`` (the first warms up).

    The reply may stop early at an end-of-turn token, so the count is the reply's tokens plus that stop token.
    """
    from .generate import generate_batch

    generate_batch(model, tokenizer, [prompt], max_new_tokens=2)
    t = time.perf_counter()
    reply = generate_batch(model, tokenizer, [prompt], max_new_tokens=new_tokens)[0]
    elapsed = time.perf_counter() - t
    n = min(new_tokens, len(tokenizer(reply, add_special_tokens=False)["input_ids"]) + 1)
    return n / max(elapsed, 1e-9)


def run_one(
    method: str,
    dataset: str = "capitals-json",
    steps: int = 30,
    base: str | None = None,
    out_dir: str | os.PathLike = "runs/compare",
    max_eval_samples: int = 32,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``method`` on ``dataset`` and measure it (in this process: call it in a fresh one)."""
    import torch

    from .evaluate import eval_rows, evaluate
    from .models import load_model, pick_device
    from .plugins import get_method
    from .train import TrainArgs, train

    handle = get_method(method)
    row: dict[str, Any] = {"method": method, "mergeable": handle.capabilities.mergeable}
    model, tok = load_model(base, method=method)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    mem_before, how = _peak_memory_mb()
    args = TrainArgs(
        method=method,
        dataset=dataset,
        base_model=base,
        max_steps=steps,
        learning_rate=None,
        batch_size=batch_size,
        max_length=max_length,
        max_eval_samples=max_eval_samples,
        output_dir=str(Path(out_dir) / method),
        seed=seed,
        device=pick_device(None),
    )
    result = train(args, model=model, tokenizer=tok)
    mem_after, _ = _peak_memory_mb()
    times = [e["elapsed_s"] for e in result.history if e.get("event") == "step"]
    # elapsed_s is cumulative since the first step; the first step (warm-up) is left out when there are more
    per_step = [b - a for a, b in zip(times, times[1:])] or times[:1]
    metrics = evaluate(model, tok, dataset, max_samples=max_eval_samples, compare_base=False, max_length=max_length)
    prompt = next((r["messages"][:-1] for r in eval_rows(dataset, max_samples=1) if "messages" in r), "Hello")
    row.update(
        trainable=int(result.params["trainable"]),
        total=int(result.params["total"]),
        percent=float(result.params["percent"]),
        peak_memory_mb=(mem_after if how.startswith("cuda") else mem_after - mem_before),
        memory_kind=how,
        step_s=sum(per_step) / len(per_step),
        steps=result.steps,
        learning_rate=next((e["learning_rate"] for e in result.history if e.get("event") == "start"), None),
        eval_loss_before=result.eval_loss_before,
        eval_loss_after=result.eval_loss_after,
        exact_match=metrics.get("adapted", {}).get("exact_match"),
        gen_tok_s=_gen_tokens_per_s(model, tok, prompt),
        device=str(next(model.parameters()).device),
    )
    return row


def run_comparison(
    methods: list[str] | None = None,
    dataset: str = "capitals-json",
    steps: int = 30,
    base: str | None = None,
    out_dir: str | os.PathLike = "runs/compare",
    on_result: Callable[[dict[str, Any]], None] | None = None,
    *,
    max_eval_samples: int = 32,
    batch_size: int = 8,
    max_length: int = 128,
    timeout_s: float | None = None,
    isolate: bool = True,
) -> list[dict[str, Any]]:
    """Run every method (default: all installed) on the same task, each in a fresh process; one row each.

    A method that fails gets a row with ``error`` (the last line of its output) instead of ending the run.
    ``isolate=False`` runs them in this process (faster to start; peak memory is then not per method).
    Writes ``comparison.json`` and ``comparison.md`` to ``out_dir``.
    """
    from .plugins import methods as installed

    names = list(methods) if methods else [m.name for m in installed()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        if not isolate:
            try:
                row = run_one(name, dataset, steps, base, out, max_eval_samples, batch_size, max_length)
                row["memory_kind"] += " (shared process)"
            except Exception as e:  # a row saying why, not a crash
                row = {"method": name, "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            if on_result:
                on_result(row)
            continue
        file = out / f"{name}.json"
        file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "peftlab.compare",
            "--one",
            name,
            "--dataset",
            dataset,
            "--steps",
            str(steps),
            "--output",
            str(out),
            "--max-eval-samples",
            str(max_eval_samples),
            "--batch-size",
            str(batch_size),
            "--max-length",
            str(max_length),
            "--json",
            str(file),
        ]
        if base is not None:
            cmd += ["--base", str(base)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode == 0 and file.exists():
                row = json.loads(file.read_text())
            else:
                tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-1:]
                row = {"method": name, "error": tail[0] if tail else f"exit status {proc.returncode}"}
        except subprocess.TimeoutExpired:
            row = {"method": name, "error": f"took longer than {timeout_s} s"}
        rows.append(row)
        if on_result:
            on_result(row)
    (out / "comparison.json").write_text(json.dumps(rows, indent=1))
    (out / "comparison.md").write_text(to_markdown(rows))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def to_markdown(results: list[dict[str, Any]]) -> str:
    """One table row per method; a failed method's row carries its error message."""
    lines = ["| " + " | ".join(title for _, title in FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    for r in results:
        if "error" in r:
            lines.append(f"| {_cell(r['method'])} | error: {_cell(r['error'])} |" + " |" * (len(FIELDS) - 2))
        else:
            lines.append("| " + " | ".join(_cell(r.get(key)) for key, _ in FIELDS) + " |")
    kinds = {r.get("memory_kind") for r in results if r.get("memory_kind")}
    if kinds:
        note = (
            "peak memory: "
            + ", ".join(sorted(kinds))
            + " (CPU: the rise of the process's max RSS during training; GPU: torch's peak allocation)"
        )
        lines += ["", note]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The comparison's options (shared by ``peftlab compare`` and ``python -m peftlab.compare``)."""
    p.add_argument("--methods", help="comma-separated methods (default: all installed)")
    p.add_argument("--dataset", default="capitals-json", help="built-in name or data file/folder")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per method (the same budget for all)")
    p.add_argument(
        "--base", default=None, help="base model: Hub id or local folder (default: the offline SmolLM2-135M-Instruct)"
    )
    p.add_argument(
        "--output",
        dest="out_dir",
        metavar="OUTPUT",
        default="runs/compare",
        help="folder each method's adapter and the table are written to",
    )
    p.add_argument("--out-dir", dest="out_dir", default="runs/compare", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--max-eval-samples", type=int, default=32, help="cap on eval rows")
    p.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per row")
    p.add_argument("--timeout", type=float, default=None, help="seconds one method may take (default: no limit)")


def run_from_args(a: argparse.Namespace, as_json: bool = False) -> int:
    """Run the comparison the parsed options describe; progress on stderr, the table (or JSON) on stdout."""
    methods = a.methods.split(",") if a.methods else None
    rows = run_comparison(
        methods,
        dataset=a.dataset,
        steps=a.steps,
        base=a.base,
        out_dir=a.out_dir,
        max_eval_samples=a.max_eval_samples,
        batch_size=a.batch_size,
        max_length=a.max_length,
        timeout_s=a.timeout,
        on_result=lambda r: print(f"[compare] {r['method']}: {r.get('error') or 'done'}", file=sys.stderr, flush=True),
    )
    print(json.dumps(rows, indent=1) if as_json else to_markdown(rows))
    print(f"[compare] written to {Path(a.out_dir) / 'comparison.md'} and comparison.json", file=sys.stderr)
    return 1 if all("error" in r for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m peftlab.compare", description=__doc__)
    add_arguments(p)
    p.add_argument("--one", help="run this one method in this process and write its row to --json")
    p.add_argument("--json", help="with --one: where to write the row")
    a = p.parse_args(argv)
    if a.one:
        row = run_one(
            a.one,
            dataset=a.dataset,
            steps=a.steps,
            base=a.base,
            out_dir=a.out_dir,
            max_eval_samples=a.max_eval_samples,
            batch_size=a.batch_size,
            max_length=a.max_length,
        )
        text = json.dumps(row, indent=1)
        Path(a.json).write_text(text) if a.json else print(text)
        return 0
    return run_from_args(a)


# --- a comparison in the background (the web app's Compare tab): reload-safe, like a training job -------------------

JOB_FILE = "compare-job.json"


def start_background(
    runs_dir: str | os.PathLike,
    methods: list[str],
    dataset: str = "capitals-json",
    steps: int = 30,
    base: str | None = None,
    *,
    owner: str | None = None,
    max_eval_samples: int = 16,
    batch_size: int = 8,
    max_length: int = 128,
) -> Path:
    """Start ``python -m peftlab.compare`` for ``methods`` in a process of its own (its own session, so a closed
    page or a restarted app does not stop it) under ``runs_dir/compare-<time>``; returns that folder. Each method
    trains into ``<folder>/<method>`` (its ``progress.jsonl`` shows live progress) and writes ``<method>.json``.

    A comparison takes a slot as a training job does (``jobs.max_jobs()``): while every slot is busy (jobs and
    comparisons under ``runs_dir``) a new one is refused (``jobs.JobError``). ``owner``'s process gets the
    environment of a job of that owner (``jobs.child_environment``: none of this server's Hub tokens when owners
    are kept apart)."""
    from . import jobs
    from .plugins import get_method

    if not methods:
        raise ValueError("pick at least one method to compare")
    for m in methods:
        get_method(m)  # an unknown method is named now, not in the background
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    runs_dir = Path(runs_dir)
    limit = jobs.max_jobs()
    with jobs._scheduling(runs_dir):  # the slots are counted and taken under the jobs' own lock
        busy = sum(j.status == jobs.RUNNING for j in jobs.list_jobs(runs_dir)) + running_comparisons(runs_dir)
        if busy >= limit:
            raise jobs.JobError(
                f"every slot is busy ({busy} of {limit} training jobs and comparisons running): start the comparison "
                "when one ends"
            )
        folder = runs_dir / time.strftime("compare-%Y%m%d-%H%M%S")
        n = 1
        while folder.exists():
            n += 1
            folder = folder.with_name(f"{folder.name.split('~')[0]}~{n}")
        folder.mkdir(parents=True)
        cmd = [sys.executable, "-m", "peftlab.compare", "--methods", ",".join(methods), "--dataset", str(dataset)]
        cmd += ["--steps", str(steps), "--output", str(folder.resolve()), "--max-eval-samples", str(max_eval_samples)]
        cmd += ["--batch-size", str(batch_size), "--max-length", str(max_length)]
        if base:
            cmd += ["--base", str(base)]
        with open(folder / "compare.log", "wb") as log:
            child = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=jobs.child_environment(owner, {}),
                start_new_session=True,
            )
        job = {"pid": child.pid, "methods": list(methods), "dataset": str(dataset), "steps": steps, "owner": owner}
        job["started"] = time.time()
        (folder / JOB_FILE).write_text(json.dumps(job, indent=1) + "\n")
        _children[child.pid] = child
    return folder


_children: dict[int, subprocess.Popen] = {}  # comparisons this process started: poll() reaps them


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie or a recycled pid is not our comparison
        return "peftlab.compare" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return True


def running_comparisons(runs_dir: str | os.PathLike) -> int:
    """How many background comparisons under ``runs_dir`` still run (each holds one of ``jobs.max_jobs()``'s
    slots)."""
    n = 0
    for file in Path(runs_dir).glob(f"compare-*/{JOB_FILE}"):
        try:
            n += _alive(int(json.loads(file.read_text())["pid"]))
        except (OSError, ValueError, KeyError, TypeError):  # a half-written or foreign file: not a comparison
            continue
    return n


def background_status(folder: str | os.PathLike) -> dict[str, Any]:
    """Where a background comparison stands: ``rows`` (finished methods, in order), ``current`` (the method
    training now, with ``step`` / ``steps``), ``curves`` (method → [(step, loss)]), ``running``, ``done``."""
    from .train import read_progress

    folder = Path(folder)
    job = json.loads((folder / JOB_FILE).read_text())
    rows, curves, current = [], {}, None
    for m in job["methods"]:
        events = read_progress(folder / m)
        curve = {e["step"]: e["loss"] for e in events if e.get("event") == "step" and "loss" in e}
        if curve:
            curves[m] = sorted(curve.items())
        file = folder / f"{m}.json"
        if file.exists():
            try:
                rows.append(json.loads(file.read_text()))
                continue
            except json.JSONDecodeError:
                pass
        if current is None and events:
            current = {"method": m, "step": max(curve, default=0), "steps": job["steps"]}
    running = _alive(int(job["pid"]))
    if not running:
        done = {r["method"] for r in rows}
        for m in job["methods"]:  # a method that ended without its row: the table says so
            if m not in done:
                rows.append({"method": m, "error": _last_error(folder, m)})
        current = None
    return {**job, "folder": str(folder), "rows": rows, "curves": curves, "current": current, "running": running}


def _last_error(folder: Path, method: str) -> str:
    log = folder / "compare.log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    for ln in reversed(lines):
        if ln.startswith(f"[compare] {method}:"):
            return ln.split(":", 1)[1].strip()
    return "did not finish (stopped)"


def comparison_visible(folder: str | os.PathLike, owner: str | None) -> bool:
    """Whether ``owner`` (a session; ``None``: the API, which sees all) may see and stop the comparison in
    ``folder``: its own, one without an owner, or any when ``PEFTLAB_SHARE_JOBS=1`` (as ``jobs.visible``)."""
    from . import jobs

    try:
        started_by = json.loads((Path(folder) / JOB_FILE).read_text()).get("owner")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return owner is None or started_by is None or started_by == owner or jobs.shared_jobs()


def latest_background(runs_dir: str | os.PathLike, owner: str | None = None) -> Path | None:
    """The newest comparison under ``runs_dir`` that ``owner`` may see (``comparison_visible``; ``None``: any)."""
    for file in sorted(Path(runs_dir).glob(f"compare-*/{JOB_FILE}"), reverse=True):
        if comparison_visible(file.parent, owner):
            return file.parent
    return None


def stop_background(folder: str | os.PathLike, owner: str | None = None) -> None:
    """Stop a background comparison (its whole process group: the method training now too). ``owner``: the session
    asking; another session's comparison is refused (``jobs.JobError``)."""
    import signal

    from . import jobs

    if not comparison_visible(folder, owner):
        raise jobs.JobError(f"comparison {Path(folder).name} belongs to another session")
    job = json.loads((Path(folder) / JOB_FILE).read_text())
    pid = int(job["pid"])
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + 20
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended between the look and the kill
                pass


if __name__ == "__main__":
    sys.exit(main())

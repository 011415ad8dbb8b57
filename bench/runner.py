"""Run a pair's variants alternately (peftlab, peft, peftlab, peft, ...), each in its own process, and summarise."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .pairs import PAIRS

RESULTS = Path(__file__).parent / "results"
IMPLS = ("peftlab", "peft")


def run_variant(pair: str, impl: str, seed: int, opts: dict[str, Any], out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.worker",
        "--pair",
        pair,
        "--impl",
        impl,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ] + [f"--{k.replace('_', '-')}={v}" for k, v in opts.items() if v is not None]
    t = time.perf_counter()
    log = out.with_suffix(".log")  # the worker's progress lines, readable while it runs
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return {"pair": pair, "impl": impl, "seed": seed, "error": " | ".join(tail)}
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t
    return res


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return statistics.median(values) if values else None


METRICS = [  # (key, label, lower is better)
    ("step_median_s", "train step, median (s)", True),
    ("step_mean_s", "train step, mean (s)", True),
    ("rss_train_delta_mb", "peak RSS during training (MB, delta)", True),
    ("rss_after_train_mb", "resident memory after training (MB: model + adapter + optimizer)", True),
    ("trainable", "trainable parameters", None),
    ("gen_base_tok_s", "generate, base model (tok/s)", False),
    ("gen_adapter_tok_s", "generate, adapter unmerged (tok/s)", False),
    ("gen_merged_tok_s", "generate, merged (tok/s)", False),
    ("gen_unloaded_tok_s", "generate, merged+unloaded (tok/s)", False),
    ("eval_loss_before", "eval loss before", None),
    ("eval_loss_after", "eval loss after", None),
    ("final_train_loss", "train loss, mean of last 5 steps", None),
]


def summarise(pair: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    for r in runs:
        if "losses" in r:
            r["final_train_loss"] = statistics.mean(r["losses"][-5:])
    by = {impl: [r for r in runs if r["impl"] == impl and "error" not in r] for impl in IMPLS}
    table = {}
    for key, _, _ in METRICS:
        a, b = _median(by["peftlab"], key), _median(by["peft"], key)
        table[key] = {"peftlab": a, "peft": b, "ratio": a / b if a is not None and b else None}
    # the merged model must generate as fast as the base model in the same process
    for impl in IMPLS:
        ratios = [r["gen_unloaded_tok_s"] / r["gen_base_tok_s"] for r in by[impl] if r.get("gen_unloaded_tok_s")]
        table.setdefault("unloaded_vs_base", {})[impl] = statistics.median(ratios) if ratios else None
        ratios = [r["gen_merged_tok_s"] / r["gen_base_tok_s"] for r in by[impl] if r.get("gen_merged_tok_s")]
        table.setdefault("merged_vs_base", {})[impl] = statistics.median(ratios) if ratios else None
    curves = {
        impl: [statistics.mean(step) for step in zip(*[r["losses"] for r in by[impl]])] for impl in IMPLS if by[impl]
    }
    seeds_spread = {
        impl: (max(x) - min(x)) if len(x := [r["eval_loss_after"] for r in by[impl]]) > 1 else None for impl in IMPLS
    }
    return {
        "pair": pair,
        "method": PAIRS[pair].method,
        "config": PAIRS[pair].config,
        "note": PAIRS[pair].note,
        "table": table,
        "loss_curves": curves,
        "eval_loss_spread_across_seeds": seeds_spread,
        "errors": [f"{r['impl']} seed {r['seed']}: {r['error']}" for r in runs if "error" in r],
        "runs": runs,
    }


def bench_pair(pair: str, repeats: int = 2, opts: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """``repeats`` rounds of (peftlab, peft); round k uses seed k on both sides."""
    opts = dict(opts or {})
    RESULTS.mkdir(parents=True, exist_ok=True)
    impls = IMPLS if PAIRS[pair].peft is not None else ("peftlab",)
    runs, loads = [], [os.getloadavg()[0]]
    for k in range(repeats):
        for impl in impls:
            res = run_variant(pair, impl, k, opts, RESULTS / f"{pair}-{impl}-{k}.json")
            loads.append(os.getloadavg()[0])
            brief = res.get("error") or (
                f"step {res['step_median_s']:.3f}s, rss +{res['rss_train_delta_mb']:.0f}MB, "
                f"eval {res['eval_loss_before']:.3f}->{res['eval_loss_after']:.3f}, "
                f"wall {res['wall_s']:.0f}s"
            )
            log(f"[{pair}] round {k} {impl}: {brief}")
            runs.append(res)
    summary = summarise(pair, runs)
    env = next((r["env"] for r in runs if "env" in r), {})
    summary["env"] = {
        **env,
        "threads": opts.get("threads") or 2,
        "loadavg_1min": loads,
        "repeats": repeats,
        "options": opts,
    }
    (RESULTS / f"{pair}.json").write_text(json.dumps(summary, indent=1))
    return summary

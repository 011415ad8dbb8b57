"""Generation speed: tokens/s of the decode loop for the base model, one adapter unmerged, merged, and base +
adapted side by side in one batched pass vs two passes, for LoRA, prompt tuning and prefix tuning; and
``peftlab eval`` on 50 held-out rows, this tree against an older commit.

``python -m bench.generate_speed [--new-tokens 32] [--rounds 2] [--eval-old HEAD~3]``

Everything runs in ONE process per part, variant after variant within each round, so drift in machine
load hits all alike; speed does not depend on training, so adapters are initialised and randomised, not
trained. ``transformers.generate`` (the path before the plain decode loop) is measured alongside.
The eval part runs ``peftlab eval`` as a user would (a fresh process per run, start-up and model load
included), alternating the new tree and a ``git worktree`` of the old commit (``PYTHONPATH`` points its
``core`` first); both evaluate the same saved LoRA adapter on the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {  # adapter name → (method, config)
    "lora": ("lora", {"r": 8}),
    "prompt": ("prompt_tuning", {"num_virtual_tokens": 20}),
    "prefix": ("prefix_tuning", {"num_virtual_tokens": 20}),
}
PROMPT = "Structure the following.\nAmsterdam serves as the capital of Netherlands."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed(fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) of ``fn()``: on a shared machine the wall time
    carries the other processes' load, the CPU time much less of it."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def decode_part(a: argparse.Namespace) -> dict:
    import peftlab
    from peftlab.generate import greedy_decode, prompt_ids
    from peftlab.models import load_model
    from peftlab.testing import randomize_adapter

    model, tok = load_model(a.base)
    for name, (method, cfg) in FAMILIES.items():
        peftlab.add_adapter(model, method, cfg, name=name, activate=False)
        randomize_adapter(model, name, std=0.02, seed=1)
    ids = prompt_ids(tok, PROMPT)
    n = a.new_tokens
    pad = tok.pad_token_id

    def loop(rows: list) -> None:  # exactly n new tokens per row (no stop tokens)
        with peftlab.mixed_batch(model, rows):
            greedy_decode(model, [ids] * len(rows), pad_id=pad, stops=[], max_new_tokens=n)

    def hf(rows: list) -> None:
        x = torch.tensor([ids] * len(rows))
        with peftlab.mixed_batch(model, rows), torch.no_grad():
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=None,
            )

    def merged(name: str) -> None:
        peftlab.merge_adapter(model, name)
        try:
            loop([None])  # the merged weights serve the base rows
        finally:
            peftlab.unmerge_adapter(model, name)

    variants: dict[str, tuple[int, object]] = {  # label → (tokens generated, call)
        "base, transformers generate (before)": (n, lambda: hf([None])),
        "base, decode loop": (n, lambda: loop([None])),
    }
    for name in FAMILIES:
        variants[f"{name}: unmerged, transformers generate (before)"] = (n, lambda name=name: hf([name]))
        variants[f"{name}: unmerged, decode loop"] = (n, lambda name=name: loop([name]))
        if peftlab.get_method(FAMILIES[name][0]).capabilities.mergeable:
            variants[f"{name}: merged, decode loop"] = (n, lambda name=name: merged(name))
        variants[f"{name}: side by side, one pass"] = (2 * n, lambda name=name: loop([name, None]))
        variants[f"{name}: side by side, two passes"] = (2 * n, lambda name=name: (loop([name]), loop([None])))
    for _, call in variants.values():
        call()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for label, (_, call) in variants.items():
            times[label].append(_timed(call))
        log(f"decode round {r + 1}/{a.rounds} done")
    return {  # best round: tokens per wall second, tokens per CPU second
        label: {
            "tok_s": variants[label][0] / min(w for w, _ in ts),
            "tok_per_cpu_s": variants[label][0] / min(c for _, c in ts),
        }
        for label, ts in times.items()
    }


def eval_part(a: argparse.Namespace) -> dict:
    """``peftlab eval`` wall time, this tree vs ``--eval-old``, alternating, same adapter and rows."""
    import peftlab
    from peftlab.models import load_model

    work = Path(tempfile.mkdtemp(prefix="genspeed-"))
    adapter = Path(a.eval_adapter) if a.eval_adapter else work / "adapter"
    if not a.eval_adapter:  # a randomised LoRA: its replies diverge at once, the case where stopping early pays most
        model, tok = load_model(a.base)
        peftlab.add_adapter(model, "lora", {"r": 8})
        from peftlab.testing import randomize_adapter

        randomize_adapter(model, std=0.02, seed=1)
        peftlab.save_adapter(model, adapter)
        del model
    old = work / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.eval_old], check=True)
    argv = ["eval", "--adapter", str(adapter), "--dataset", a.eval_dataset, "--max-samples"]
    argv += [str(a.eval_rows), "--base", a.base, "--json"]
    runs = {"before": [], "after": []}
    cpu = {"before": [], "after": []}
    results = {}
    try:
        for r in range(a.eval_rounds):
            for label in ("before", "after"):
                env = dict(os.environ)
                if label == "before":
                    env["PYTHONPATH"] = str(old / "core") + os.pathsep + env.get("PYTHONPATH", "")
                t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run(
                    [sys.executable, "-m", "peftlab", *argv], env=env, capture_output=True, text=True, timeout=3600
                )
                runs[label].append(time.perf_counter() - t)
                c2 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[label].append(c2.ru_utime + c2.ru_stime - c.ru_utime - c.ru_stime)
                if out.returncode != 0:
                    raise RuntimeError(f"{label}: {out.stderr[-2000:]}")
                results[label] = json.loads(out.stdout)
                log(f"eval {label} round {r + 1}: {runs[label][-1]:.1f} s")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    same = all(
        results["before"][k].get("exact_match") == results["after"][k].get("exact_match") for k in ("adapted", "base")
    )
    return {
        "rows": results["after"]["rows"],
        "seconds_before": min(runs["before"]),
        "seconds_after": min(runs["after"]),
        "speedup": min(runs["before"]) / min(runs["after"]),
        "cpu_seconds_before": min(cpu["before"]),
        "cpu_seconds_after": min(cpu["after"]),
        "cpu_speedup": min(cpu["before"]) / min(cpu["after"]),
        "exact_match_equal": same,
        "exact_match": {k: results["after"][k].get("exact_match") for k in ("adapted", "base")},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.generate_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row in the decode part")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the decode part (best is kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-old", default=None, help="commit to time `peftlab eval` against (default: skip)")
    p.add_argument(
        "--eval-adapter",
        default=None,
        help="a trained adapter folder to evaluate (default: a randomised LoRA r=8, saved to a temporary folder)",
    )
    p.add_argument("--eval-rows", type=int, default=50)
    p.add_argument("--eval-rounds", type=int, default=1)
    p.add_argument("--eval-dataset", default="capitals-json")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"threads": a.threads, "torch": torch.__version__, "load_before": os.getloadavg()[0]}
    if not a.skip_decode:
        out["decode_tok_s"] = decode_part(a)
        if a.out:  # kept even if the (long) eval part fails or is stopped
            Path(a.out).write_text(json.dumps(out, indent=2))
    if a.eval_old:
        out["eval"] = eval_part(a)
    out["load_after"] = os.getloadavg()[0]
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()

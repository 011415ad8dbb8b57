"""Composing two r=8 LoRAs of SmolLM2: peftlab's ``compose`` against peft's ``add_weighted_adapter``, same parents.

``python -m bench.compose_speed [--types cat linear ties svd] [--repeats 3] [--threads 2]``

Every measurement runs in a fresh process (``--worker``), the two tools alternating, so each peak RSS
(``ru_maxrss``) is that one composition's. Reported per type: peftlab's whole ``compose`` call (resolve and check
both parents with the doctor, read them, merge, write the merged folder), timed twice in one process: the first call
also pays one-time lazy imports (the plugins, the transformers model code the doctor's shape check uses), the second
is the composition itself; peft's ``add_weighted_adapter`` alone, then with ``save_pretrained`` of the result, both
after its base model and parents are loaded; and each process's peak RSS, next to a process that only imported the
same libraries and one that loaded the base model (what "one base model" costs here). The parents are two random
LoRAs (r=8, α=16, SmolLM2's default targets q_proj and v_proj) made once in ``bench/results/compose_speed/``;
``ties`` uses density 0.5, ``svd`` rank 8. Results: ``bench/results/compose_speed.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = RESULTS / "compose_speed"
OPTIONS = {"ties": {"density": 0.5}, "svd": {"svd_rank": 8}}
TARGETS = {"cat": 2.0, "linear": 2.0, "ties": 2.0, "svd": 10.0}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_parents(threads: int) -> list[Path]:
    """Two random r=8 LoRA adapters of SmolLM2 (made once)."""
    folders = [WORK / "parent_a", WORK / "parent_b"]
    if all((f / "adapter_model.safetensors").exists() for f in folders):
        return folders
    import torch

    import peftlab
    from peftlab.models import load_model

    torch.set_num_threads(threads)
    for seed, folder in enumerate(folders, start=1):
        model, _ = load_model(None, dtype="float32", device="cpu")
        torch.manual_seed(seed)
        peftlab.add_adapter(model, "lora", {"r": 8, "lora_alpha": 16, "init_lora_weights": False})
        peftlab.save_adapter(model, folder)
    return folders


def worker(tool: str, combination: str, parents: list[str], threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import peftlab  # noqa: F401 - the imports are part of the baseline
    import peftlab_hub

    if tool == "imports":
        return {"peak_mb": peak_mb()}
    from peftlab.models import default_model_dir, load_model

    if tool == "base":
        t = time.perf_counter()
        load_model(None, dtype="float32", device="cpu")
        return {"peak_mb": peak_mb(), "load_s": time.perf_counter() - t}
    opts = OPTIONS.get(combination, {})
    weights = [0.6, 0.4]
    with tempfile.TemporaryDirectory() as tmp:
        if tool == "peftlab":
            t = time.perf_counter()
            peftlab_hub.compose(parents, weights, combination, output=Path(tmp) / "first", **opts)
            first = time.perf_counter() - t
            t = time.perf_counter()
            peftlab_hub.compose(parents, weights, combination, output=Path(tmp) / "merged", **opts)
            return {"seconds": time.perf_counter() - t, "first_call_s": first, "peak_mb": peak_mb()}
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        t = time.perf_counter()
        base = AutoModelForCausalLM.from_pretrained(str(default_model_dir()), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, parents[0], adapter_name="p0")
        model.load_adapter(parents[1], adapter_name="p1")
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        model.add_weighted_adapter(["p0", "p1"], weights, "merged", combination_type=combination, **opts)
        merge_s = time.perf_counter() - t
        model.save_pretrained(Path(tmp) / "saved", selected_adapters=["merged"])
        return {
            "seconds": merge_s,
            "seconds_with_save": time.perf_counter() - t,
            "load_s": load_s,
            "peak_mb": peak_mb(),
        }


def run_worker(tool: str, combination: str, parents: list[Path], threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.compose_speed", "--worker", tool, combination, *map(str, parents)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True, env={**os.environ})
    if out.returncode:
        raise RuntimeError(f"{tool} {combination} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compose_speed", description=__doc__)
    p.add_argument("--types", nargs="+", default=list(TARGETS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a crowded machine)")
    p.add_argument("--worker", nargs="+", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        tool, combination, *parents = a.worker
        print(json.dumps(worker(tool, combination, parents, a.threads)), flush=True)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    parents = make_parents(a.threads)
    size_mb = sum((f / "adapter_model.safetensors").stat().st_size for f in parents) / 2**20
    imports = min(run_worker("imports", "-", parents, a.threads)["peak_mb"] for _ in range(2))
    base = run_worker("base", "-", parents, a.threads)
    rows: dict[str, dict] = {}
    for combination in a.types:
        runs: dict[str, list[dict]] = {"peftlab": [], "peft": []}
        for _ in range(a.repeats):
            for tool in runs:
                res = run_worker(tool, combination, parents, a.threads)
                runs[tool].append(res)
                print(f"[compose_speed] {combination} {tool}: {json.dumps(res)}", file=sys.stderr, flush=True)

        def med(tool: str, key: str, runs=runs) -> float:
            return statistics.median(r[key] for r in runs[tool])

        rows[combination] = {
            "peftlab_s": med("peftlab", "seconds"),
            "peftlab_first_call_s": med("peftlab", "first_call_s"),
            "peftlab_peak_mb": med("peftlab", "peak_mb"),
            "peft_s": med("peft", "seconds"),
            "peft_s_with_save": med("peft", "seconds_with_save"),
            "peft_load_s": med("peft", "load_s"),
            "peft_peak_mb": med("peft", "peak_mb"),
            "target_s": TARGETS.get(combination),
            "runs": runs,
        }
    result = {
        "parents_mb": size_mb,
        "imports_peak_mb": imports,
        "base_peak_mb": base["peak_mb"],
        "base_load_s": base["load_s"],
        "threads": a.threads,
        "load_average": os.getloadavg(),
        "repeats": a.repeats,
        "types": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compose_speed.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    budget = result["base_peak_mb"] + result["parents_mb"]
    lines = [
        f"Parents: {result['parents_mb']:.1f} MB of safetensors in all. A process that only imports torch, "
        f"peftlab and peftlab-hub peaks at {result['imports_peak_mb']:,.0f} MB; one that also loads the base model "
        f"(float32) at {result['base_peak_mb']:,.0f} MB (load {result['base_load_s']:.1f} s), so the memory "
        f'budget "one base model + the parents" is {budget:,.0f} MB. Medians of {result["repeats"]} runs, each in '
        f"a fresh process, {result['threads']} threads.",
        "",
        "| type | peftlab compose s (check, read, merge, write) | target | first call in the process s | peft "
        "add_weighted_adapter s (merge / + save) | peft load base + parents s | peak RSS MB peftlab | peak RSS MB "
        "peft |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["types"].items():
        ok = "✓" if r["peftlab_s"] < (r["target_s"] or float("inf")) else "✗"
        lines.append(
            f"| {name} | {r['peftlab_s']:.2f} | < {r['target_s']:g} s {ok} | {r['peftlab_first_call_s']:.1f} | "
            f"{r['peft_s']:.2f} / "
            f"{r['peft_s_with_save']:.2f} | {r['peft_load_s']:.1f} | {r['peftlab_peak_mb']:,.0f} | "
            f"{r['peft_peak_mb']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

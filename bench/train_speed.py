"""Training speed on mixed-length rows: peftlab (its defaults: packed, logits only where a label is) vs peft +
``transformers.Trainer`` (padding to the longest row of a batch, the default users get) vs TRL's ``SFTTrainer``
(its best CPU settings: padding-free, its fused LM head, gradient checkpointing off; fp32 as the others).

``python -m bench.train_speed [--rows 96] [--warmup 1] [--timed 4] [--rounds 2] [--batch-size 8] [--max-length 256]``

One run, alternating: each round runs every implementation once, each in its own process (its own peak memory),
on the same base (SmolLM2-135M-Instruct), the same LoRA (r 8, α 16, all linear projections of the blocks, no
dropout), the same rows in the same batches (peftlab's shuffled order, fed to the others sequentially), the same
constant LR, AdamW, clipping 1.0, seed and threads. Per implementation it reports useful (non-padding) tokens/s over
the timed steps, the positions it computed (padding included), its peak memory (CPU: resident set, sampled; CUDA:
max allocated) and its loss per step. MFU = useful tokens/s × FLOPs per token ÷ the fp32 (CPU) / bf16 (CUDA) matmul
peak measured in the same run with a large matmul; FLOPs per token = 4 × the base's parameters (forward 2N plus the
backward's input gradients 2N: the base is frozen, the adapter's own FLOPs are negligible), attention's
length-dependent FLOPs left out (small at these lengths). Results: bench/results/train_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("peftlab", "peft+Trainer", "TRL SFTTrainer")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGETS}


# --- the data -----------------------------------------------------------------------------------------------------


def mixed_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat rows of mixed length from the built-in capitals and ISO-date rows: about half single Q&A rows
    (~50 tokens with the template), a third 2-4 turn conversations, the rest 7 turns (~200 tokens)."""
    from peftlab import data as pdata

    pool = [r["messages"] for name in ("capitals-json", "iso-dates") for r in pdata.load_rows(name)]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = rng.choices([1, 2, 4, 7], weights=[50, 20, 15, 15])[0]
        messages = [m for conv in rng.sample(pool, turns) for m in conv]
        rows.append({"messages": messages})
    return rows


# --- measuring ----------------------------------------------------------------------------------------------------


def matmul_peak(threads: int, size: int = 2048, reps: int = 8) -> dict[str, Any]:
    """The best fp32 (CPU) or bf16 (CUDA) GFLOP/s of a ``size``³ matmul."""
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    dtype, device = (torch.bfloat16, "cuda") if cuda else (torch.float32, "cpu")
    size = 8192 if cuda else size
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return {"gflops": 2 * size**3 / best / 1e9, "dtype": str(dtype).replace("torch.", ""), "size": size}


class PeakMemory:
    """Peak resident memory (sampled every 20 ms) on CPU, max allocated on CUDA; MB."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self.cuda = torch.cuda.is_available()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated() / 2**20


# --- one implementation, in its own process -------------------------------------------------------------------------


def plan(rows_file: str, tokenizer, batch_size: int, max_length: int, seed: int, steps: int):
    """The encoded training rows and the row indices of each of the first ``steps`` micro-batches, exactly as
    ``peftlab.train`` draws them."""
    from peftlab import data as pdata
    from peftlab.train import _batch_indices

    rows = pdata.load_rows(rows_file)
    train_rows, _ = pdata.split_rows(rows, 0.0, seed)
    items = pdata.encode_rows(train_rows, tokenizer, max_length=max_length)
    gen = _batch_indices(len(items), batch_size, seed)
    return items, [next(gen) for _ in range(steps)]


def run_peftlab(a, model, tok, items, batches) -> dict[str, Any]:
    from peftlab.train import TrainArgs, train

    times, losses = [], []

    def on_event(e: dict) -> None:
        if e["event"] == "step":
            times.append(time.perf_counter())
            losses.append(e["loss"])
        elif e["event"] == "start":
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = TrainArgs(
            method="lora",
            method_config=dict(LORA),
            dataset=a.data,
            output_dir=out,
            max_steps=len(batches),
            batch_size=a.batch_size,
            max_length=a.max_length,
            learning_rate=a.lr,
            warmup_ratio=0.0,
            lr_scheduler="constant",
            max_grad_norm=1.0,
            seed=a.seed,
            eval_fraction=0.0,
            max_eval_samples=1,
            save_every=0,
            save_minutes=0,
            threads=a.threads,
        )
        with PeakMemory() as mem:
            result = train(args, model=model, tokenizer=tok, on_event=on_event)
    start = next(e for e in result.history if e["event"] == "start")
    return {"times": times, "losses": losses, "peak_mb": mem.peak, "packing": start["packing"]}


class _Timer:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                timer.times.append(time.perf_counter())

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    timer.losses.append(float(logs["loss"]))

        return CB()


def _hf_args(a, out: str, steps: int) -> dict[str, Any]:
    return dict(
        output_dir=out,
        per_device_train_batch_size=a.batch_size,
        max_steps=steps,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=a.seed,
        data_seed=a.seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        disable_tqdm=True,
    )


def _ordered(items, batches):
    """The rows in batch order (fed sequentially, so each framework trains on the same micro-batches)."""
    from datasets import Dataset

    order = [j for b in batches for j in b]
    return Dataset.from_list([{"input_ids": items[j]["input_ids"], "labels": items[j]["labels"]} for j in order])


def _sequential(cls):
    class Sequential(cls):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    return Sequential


def run_trainer(a, model, tok, items, batches) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    timer = _Timer()
    with tempfile.TemporaryDirectory() as out:
        trainer = _sequential(Trainer)(
            model=model,
            args=TrainingArguments(**_hf_args(a, out, len(batches)), remove_unused_columns=False),
            train_dataset=_ordered(items, batches),
            data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
            callbacks=[timer.callback()],
        )
        with PeakMemory() as mem:
            start = time.perf_counter()
            trainer.train()
    return {"times": [start, *timer.times], "losses": timer.losses, "peak_mb": mem.peak}


def run_trl(a, model, tok, items, batches) -> dict[str, Any]:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    timer = _Timer()
    with tempfile.TemporaryDirectory() as out:
        trainer = _sequential(SFTTrainer)(
            model=model,
            args=SFTConfig(
                **_hf_args(a, out, len(batches)), padding_free=True, max_length=None, gradient_checkpointing=False
            ),
            train_dataset=_ordered(items, batches),
            processing_class=tok,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
            callbacks=[timer.callback()],
        )
        with PeakMemory() as mem:
            start = time.perf_counter()
            trainer.train()
    return {"times": [start, *timer.times], "losses": timer.losses, "peak_mb": mem.peak}


RUNNERS = {"peftlab": run_peftlab, "peft+Trainer": run_trainer, "TRL SFTTrainer": run_trl}


def worker(a) -> None:
    import transformers

    from peftlab.models import load_model

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model, tok = load_model(None)
    steps = a.warmup + a.timed
    items, batches = plan(a.data, tok, a.batch_size, a.max_length, a.seed, steps)
    params = sum(p.numel() for p in model.parameters())
    out = RUNNERS[a.worker](a, model, tok, items, batches)
    durations = [t1 - t0 for t0, t1 in zip(out["times"], out["times"][1:], strict=False)][a.warmup :]
    timed = batches[a.warmup : a.warmup + len(durations)]
    useful = [sum(len(items[j]["input_ids"]) for j in b) for b in timed]
    padded = [len(b) * max(len(items[j]["input_ids"]) for j in b) for b in timed]
    record = {
        "impl": a.worker,
        "step_s": durations,
        "useful_tokens": useful,
        "useful_tokens_per_s": sum(useful) / sum(durations),
        "padded_positions": padded,
        "losses": out["losses"],
        "peak_mb": out["peak_mb"],
        "base_params": params,
        "packing": out.get("packing"),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    Path(a.out).write_text(json.dumps(record))


def compile_probe(a) -> dict[str, Any]:
    """torch.compile of the training step, evaluated: forward + backward + AdamW of peftlab's LoRA on the same
    packed micro-batches (the first ``timed`` of the plan, lengths differing as in training), eager vs compiled
    (``dynamic=True``, so new lengths do not recompile); the compile time is reported apart."""
    from peftlab import adapters as ad
    from peftlab import data as pdata
    from peftlab.loss import labelled_logits, use_packed_attention
    from peftlab.models import load_model

    torch.set_num_threads(a.threads)
    result: dict[str, Any] = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(a.seed)
        model, tok = load_model(None)
        items, batches = plan(a.data, tok, a.batch_size, a.max_length, a.seed, a.warmup + a.timed)
        ad.add_adapter(model, "lora", dict(LORA), "default")
        ad.set_active(model, ["default"])
        params = list(ad.prepare_for_training(model, "default").values())
        opt = torch.optim.AdamW(params, lr=a.lr)
        model.train()
        labelled = labelled_logits(model)
        use_packed_attention(model)
        forward = torch.compile(model, dynamic=True) if mode == "compiled" else model
        times = []
        for b in batches:
            batch = pdata.pack([items[j] for j in b])
            t = time.perf_counter()
            loss, _ = labelled.loss(forward, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        tokens = sum(len(items[j]["input_ids"]) for b in batches[a.warmup :] for j in b)
        result[mode] = {"first_step_s": times[0], "tokens_per_s": tokens / sum(times[a.warmup :])}
        print(f"[compile] {mode}: {result[mode]}", flush=True)
    return result


def profile_step(a) -> str:
    """Where one packed peftlab LoRA step's time goes (``torch.profiler``, CPU): the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    from peftlab import adapters as ad
    from peftlab import data as pdata
    from peftlab.loss import labelled_logits, use_packed_attention
    from peftlab.models import load_model

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model, tok = load_model(None)
    items, batches = plan(a.data, tok, a.batch_size, a.max_length, a.seed, 2)
    ad.add_adapter(model, "lora", dict(LORA), "default")
    ad.set_active(model, ["default"])
    params = list(ad.prepare_for_training(model, "default").values())
    opt = torch.optim.AdamW(params, lr=a.lr)
    model.train()
    labelled = labelled_logits(model)
    use_packed_attention(model)  # as peftlab.train does for a packed run on sdpa

    def step(b) -> None:
        loss, _ = labelled.loss(model, pdata.pack([items[j] for j in b]))
        loss.backward()
        opt.step()
        opt.zero_grad()

    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[1])
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(table, flush=True)
    return table


# --- the driver -----------------------------------------------------------------------------------------------------


def markdown(summary: dict[str, Any]) -> str:
    peak = summary["peak"]
    runs = summary["runs"]
    first = runs[0]
    lines = [
        f"Mixed-length rows ({summary['rows']} rows, {summary['mean_row_tokens']:.0f} tokens on average, "
        f"{summary['min_row_tokens']}–{summary['max_row_tokens']}), batch {summary['batch_size']}, max length "
        f"{summary['max_length']}, {summary['timed']} timed steps after {summary['warmup']} untimed, "
        f"{summary['rounds']} rounds alternating, {summary['threads']} threads, {first['device']} {first['dtype']}; "
        f"matmul peak {peak['gflops']:.0f} GFLOP/s ({peak['dtype']}, {peak['size']}³); FLOPs/token = 4 × "
        f"{first['base_params'] / 1e6:.1f}M.",
        "",
        "| implementation | useful tokens/s (each round) | × peft+Trainer | MFU | peak memory MB | loss, last timed "
        "step (each round) |",
        "|---|---|---|---|---|---|",
    ]
    by = {impl: [r for r in runs if r["impl"] == impl] for impl in summary["impls"]}
    base = (
        statistics.mean(r["useful_tokens_per_s"] for r in by.get("peft+Trainer", []))
        if by.get("peft+Trainer")
        else None
    )
    for impl, rs in by.items():
        if not rs:
            continue
        tps = [r["useful_tokens_per_s"] for r in rs]
        mean = statistics.mean(tps)
        mfu = mean * 4 * first["base_params"] / (peak["gflops"] * 1e9)
        ratio = f"{mean / base:.2f}×" if base else "–"
        last = ", ".join(f"{r['losses'][-1]:.4f}" for r in rs)
        lines.append(
            f"| {impl} | {statistics.mean(tps):.1f} ({', '.join(f'{t:.1f}' for t in tps)}) | {ratio} | {mfu:.0%} | "
            f"{max(r['peak_mb'] for r in rs):.0f} | {last} |"
        )
    lines += ["", "Loss per step (first round):", ""]
    for impl, rs in by.items():
        if rs:
            lines.append(f"- {impl}: {', '.join(f'{x:.4f}' for x in rs[0]['losses'])}")
    useful = sum(runs[0]["useful_tokens"])
    padded = sum(runs[0]["padded_positions"])
    lines.append(f"\nIn the timed batches {useful / padded:.0%} of the positions padded to the longest row are tokens.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    p.add_argument("--timed", type=int, default=4, help="timed steps")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated, of: " + ", ".join(IMPLS))
    p.add_argument("--compile-probe", action="store_true", help="only: eager vs torch.compile of peftlab's step")
    p.add_argument("--profile", action="store_true", help="only: where a packed peftlab step's time goes")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    if a.compile_probe or a.profile:
        RESULTS.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            a.data = str(Path(tmp) / "mixed.jsonl")
            Path(a.data).write_text("".join(json.dumps(r) + "\n" for r in mixed_rows(a.rows, a.seed)))
            if a.profile:
                (RESULTS / "train_profile.txt").write_text(profile_step(a))
            else:
                (RESULTS / "train_compile.json").write_text(json.dumps(compile_probe(a), indent=1))
        return 0
    impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        p.error(f"unknown implementation(s) {unknown}; known: {', '.join(IMPLS)}")
    RESULTS.mkdir(exist_ok=True)
    from peftlab.models import load_tokenizer

    tok = load_tokenizer(None)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mixed.jsonl"
        rows = mixed_rows(a.rows, a.seed)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from peftlab import data as pdata

        lengths = [len(it["input_ids"]) for it in pdata.encode_rows(rows, tok, max_length=a.max_length)]
        peak = matmul_peak(a.threads)
        print(f"[train_speed] matmul peak {peak['gflops']:.0f} GFLOP/s; rows {min(lengths)}–{max(lengths)} tokens")
        for rnd in range(a.rounds):
            for impl in impls if rnd % 2 == 0 else list(reversed(impls)):
                out = Path(tmp) / f"{impl}-{rnd}.json".replace(" ", "_").replace("+", "_")
                cmd = [sys.executable, "-m", "bench.train_speed", "--worker", impl, "--data", str(data)]
                cmd += ["--out", str(out), "--warmup", str(a.warmup), "--timed", str(a.timed)]
                cmd += ["--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr)]
                cmd += ["--seed", str(a.seed), "--threads", str(a.threads)]
                t = time.time()
                subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
                record = {**json.loads(out.read_text()), "round": rnd}
                runs.append(record)
                print(
                    f"[train_speed] round {rnd + 1} {impl}: {record['useful_tokens_per_s']:.1f} useful tokens/s, "
                    f"losses {[round(x, 4) for x in record['losses']]} ({time.time() - t:.0f}s)",
                    flush=True,
                )
    summary = {
        "rows": a.rows,
        "mean_row_tokens": statistics.mean(lengths),
        "min_row_tokens": min(lengths),
        "max_row_tokens": max(lengths),
        "batch_size": a.batch_size,
        "max_length": a.max_length,
        "warmup": a.warmup,
        "timed": a.timed,
        "rounds": a.rounds,
        "threads": a.threads,
        "impls": impls,
        "peak": peak,
        "runs": runs,
    }
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    (RESULTS / f"train_speed-{tag}.json").write_text(json.dumps(summary, indent=1))
    md = markdown(summary)
    (RESULTS / f"train_speed-{tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

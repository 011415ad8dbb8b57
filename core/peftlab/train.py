"""One trainer for every method, on ``accelerate`` (so ``accelerate launch`` spreads it over GPUs/machines).

AdamW, warm-up then a cosine/linear/constant schedule, gradient accumulation, clipping, seed, eval every
N steps, checkpoints and resume, progress as JSON lines, a clean stop (SIGTERM, SIGINT or a STOP file).
The method's own training needs reach it through hooks (``extra_loss``, ``on_train_step``).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import adapters as ad
from . import data as pdata
from .errors import ConfigError, PeftlabError
from .io import load_adapter, save_adapter
from .schema import fields_of, from_values, option, parse_values

PROGRESS_FILE = "progress.jsonl"
STOP_FILE = "STOP"


@dataclass
class TrainArgs:
    """Everything a training run needs; the CLI flags and the app's form are generated from it (``schema``)."""

    method: str = option("lora", "PEFT method (see `peftlab methods`)")
    method_config: dict[str, Any] = option({}, "the method's config fields (on the command line: one flag each)")
    base_model: str | None = option(None, "base model: Hub id or local folder (default: the offline "
                                    "SmolLM2-135M-Instruct)", flag="base")
    dataset: str = option("capitals-json", "built-in name or data file/folder")
    output_dir: str = option("runs/adapter", "folder the adapter, checkpoints and progress are written to",
                             flag="output")
    adapter_name: str = option("default", "adapter slot name")
    max_steps: int = option(100, "optimizer steps")
    learning_rate: float | None = option(None, "peak LR (default: the method's)")
    batch_size: int = option(8, "rows per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    warmup_ratio: float = option(0.1, "share of steps spent warming up the LR")
    lr_scheduler: str = option("cosine", "LR schedule after warm-up", choices=["cosine", "linear", "constant"])
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)")
    seed: int = option(0, "random seed (data order, init)")
    eval_every: int = option(0, "evaluate every N steps (0 = start and end only)")
    save_every: int = option(0, "checkpoint every N steps (0 = at the end only)")
    max_length: int = option(256, "max tokens per row")
    eval_fraction: float = option(0.1, "held-out share when the data has no split")
    max_eval_samples: int = option(64, "cap on eval rows")
    loss_on: str = option("assistant", "assistant (reply tokens only) or all", choices=["assistant", "all"])
    dtype: str = option("auto", "weights dtype (auto: bf16 on CUDA, else fp32)",
                        choices=["auto", "float32", "bfloat16", "float16"])
    device: str | None = option(None, "cpu, cuda, mps (default: best available)")
    threads: int | None = option(None, "CPU threads for torch (default: torch's)")
    resume: bool = option(False, "continue from the last checkpoint in the output folder")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for spec in fields_of(type(self)):
            value = getattr(self, spec.name)
            if spec.choices and value not in spec.choices:
                raise ConfigError(f"{spec.name} must be one of {', '.join(spec.choices)}, got {value!r}")
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}", str(self.adapter_name)):
            raise ConfigError(f"adapter_name {self.adapter_name!r}: use letters, digits, '_' and '-' (no '.', '/')")
        # what would stop the run, checked before it makes its folder: a refused run leaves nothing behind
        from .io import check_output_dir

        ad.make_config(self.method, self.method_config)  # the method exists; its options are its own
        check_output_dir(self.output_dir)
        pdata.check_dataset(self.dataset)

    @classmethod
    def from_strings(cls, values: dict[str, Any], method_flags: dict[str, Any] | None = None) -> TrainArgs:
        """Build from CLI flags or form fields (text is parsed by field type; typed values pass as they are)
        and the method's config fields (``{"r": "4"}``), so both ``__post_init__``s validate (``ConfigError``)
        exactly as for ``peftlab train``. Without method flags, ``method_config`` stays as given (the defaults)."""
        kwargs = parse_values(cls, values)
        method = kwargs.get("method", cls.__dataclass_fields__["method"].default)
        config_class = ad.resolve_method(method).config_class
        config = config_class.from_strings({**kwargs.get("method_config", {}), **(method_flags or {})})
        if method_flags:
            kwargs["method_config"] = asdict(config)
        return from_values(cls, kwargs)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    stopped: bool
    eval_loss_before: float | None
    eval_loss_after: float | None
    params: dict[str, float]
    history: list[dict] = field(default_factory=list)


class StopFlag:
    """Set by SIGTERM/SIGINT (in the main thread), a STOP file in the output folder, or ``set()``."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self._event = threading.Event()
        self.stop_file = stop_file

    def set(self, *_: Any) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set() or bool(self.stop_file and self.stop_file.exists())


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return f


def _batches(items: list[dict], batch_size: int, seed: int, pad_id: int):
    """Endless shuffled micro-batches; epoch e uses permutation seeded by (seed, e)."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(items), generator=g).tolist()
        for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield pdata.collate([items[j] for j in order[i:i + batch_size]], pad_id)
        epoch += 1


@torch.no_grad()
def eval_loss(model, items: list[dict], pad_id: int, batch_size: int = 8) -> float:
    """Token-weighted mean loss over ``items`` (classification: mean cross-entropy)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in pdata.collate(items[i:i + batch_size], pad_id).items()}
        out = model(**batch)
        labels = batch["labels"]
        n = labels.numel() if labels.dim() == 1 else int((labels[:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def _save_checkpoint(model, optimizer, scheduler, args: TrainArgs, step: int, out: Path) -> Path:
    ckpt = out / "checkpoints" / f"step-{step:06d}"
    save_adapter(model, ckpt, args.adapter_name)
    tensors, scalars = {}, {"step": step, "scheduler": scheduler.state_dict()["last_epoch"],
                            "args": asdict(args)}
    for idx, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
    if tensors:
        save_file(tensors, str(ckpt / "optimizer.safetensors"))
    (ckpt / "trainer_state.json").write_text(json.dumps(scalars, indent=2, default=str))
    return ckpt


def last_checkpoint(out: Path) -> Path | None:
    folders = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "trainer_state.json").exists())
    return folders[-1] if folders else None


def _restore_optimizer(optimizer, ckpt: Path) -> None:
    file = ckpt / "optimizer.safetensors"
    if not file.exists():
        return
    tensors = load_file(str(file))
    state = optimizer.state_dict()
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state["state"].setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict(state)


def train(args: TrainArgs, *, model=None, tokenizer=None, on_event: Callable[[dict], None] | None = None,
          stop: StopFlag | None = None) -> TrainResult:
    """Train adapter ``args.adapter_name`` of method ``args.method`` and save it to ``args.output_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .models import load_model

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)
    if stop is None:
        stop = StopFlag(out / STOP_FILE)
    elif stop.stop_file is None:
        stop.stop_file = out / STOP_FILE
    history: list[dict] = []
    progress = open(out / PROGRESS_FILE, "a" if args.resume else "w")

    def emit(event: dict) -> None:
        event = {"time": time.time(), **event}
        history.append(event)
        progress.write(json.dumps(event) + "\n")
        progress.flush()
        if on_event:
            on_event(event)

    try:
        return _train(args, model, tokenizer, emit, stop, out, history, Accelerator, set_seed, load_model)
    except Exception as e:
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        raise
    finally:
        progress.close()


def _train(args, model, tokenizer, emit, stop, out, history, Accelerator, set_seed, load_model) -> TrainResult:
    handle = ad.resolve_method(args.method)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    rows = pdata.load_rows(args.dataset)
    task = pdata.dataset_task(rows)
    labels = pdata.label_names(rows) if task == "SEQ_CLS" else None
    train_rows, eval_rows = pdata.split_rows(rows, args.eval_fraction, args.seed)
    eval_rows = eval_rows[: args.max_eval_samples]
    if model is None:
        emit({"event": "status", "message": "loading base model"})
        model, tokenizer = load_model(args.base_model, task=task, dtype=args.dtype, device=args.device,
                                      method=handle, method_config=args.method_config, label_names=labels)
    if tokenizer is None:
        raise PeftlabError("train(model=...) also needs tokenizer=")
    if ad.model_task(model) != task:
        raise PeftlabError(f"dataset {args.dataset} is a {task} dataset but the model is {ad.model_task(model)}")
    enc = dict(max_length=args.max_length, loss_on=args.loss_on, task=task, labels=labels)
    train_items = pdata.encode_rows(train_rows, tokenizer, **enc)
    eval_items = pdata.encode_rows(eval_rows, tokenizer, **enc) if eval_rows else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    ckpt = last_checkpoint(out) if args.resume else None
    if ckpt is not None:
        load_adapter(model, ckpt, args.adapter_name, method=handle.name)
        start = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        config = ad.entry(model, args.adapter_name)[1].config
    else:
        if args.resume:
            emit({"event": "status", "message": f"no checkpoint in {out}; starting fresh"})
        config = ad.add_adapter(model, handle, args.method_config, args.adapter_name)
        start = 0
    ad.set_active(model, [args.adapter_name])
    trainable = ad.prepare_for_training(model, args.adapter_name)
    counts = ad.count_parameters(model, trainable)
    lr = args.learning_rate or handle.train_defaults.get("learning_rate", 2e-3)

    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum, cpu=str(args.device) == "cpu")
    optimizer = ad.make_optimizer(model, args.adapter_name, list(trainable.values()), lr, args.weight_decay)
    warmup = int(args.warmup_ratio * args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_scheduler, warmup, args.max_steps))
    if ckpt is not None:
        _restore_optimizer(optimizer, ckpt)
        with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping a step
            warnings.simplefilter("ignore")
            for _ in range(start):
                scheduler.step()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw_model = accelerator.unwrap_model(model)
    device = accelerator.device

    emit({"event": "start", "method": handle.name, "config": config.to_dict(), "task": task, "steps": args.max_steps,
          "start_step": start, "learning_rate": lr, "train_rows": len(train_items), "eval_rows": len(eval_items),
          **counts})
    before = eval_loss(raw_model, eval_items, pad_id) if eval_items and start == 0 else None
    if before is not None:
        emit({"event": "eval", "step": 0, "eval_loss": before, "perplexity": math.exp(min(before, 50))})

    batches = _batches(train_items, args.batch_size, args.seed, pad_id)
    for _ in range(start * args.grad_accum):  # resume: the same data order as an uninterrupted run
        next(batches)
    model.train()
    step, t0, tokens, stopped = start, time.time(), 0, False
    last_eval = before
    while step < args.max_steps:
        if stop:
            stopped = True
            break
        loss_sum, lr_now = 0.0, scheduler.get_last_lr()[0]  # the LR this step uses
        for _ in range(args.grad_accum):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            tokens += int(batch["attention_mask"].sum())
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                extra = ad.extra_loss(raw_model, args.adapter_name)
                if extra is not None:
                    loss = loss + extra
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(list(trainable.values()), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    ad.on_train_step(raw_model, args.adapter_name, step + 1, args.max_steps)
                scheduler.step() if accelerator.sync_gradients else None
                optimizer.zero_grad()
            loss_sum += float(loss.detach())
        step += 1
        elapsed = time.time() - t0
        done = step - start
        emit({"event": "step", "step": step, "loss": loss_sum / args.grad_accum,
              "lr": lr_now, "tokens_per_s": tokens / max(elapsed, 1e-9),
              "elapsed_s": elapsed, "eta_s": elapsed / done * (args.max_steps - step)})
        if args.eval_every and step % args.eval_every == 0 and eval_items and step < args.max_steps:
            last_eval = eval_loss(raw_model, eval_items, pad_id)
            emit({"event": "eval", "step": step, "eval_loss": last_eval, "perplexity": math.exp(min(last_eval, 50))})
            model.train()
        if args.save_every and step % args.save_every == 0 and step < args.max_steps:
            path = _save_checkpoint(raw_model, optimizer, scheduler, args, step, out)
            emit({"event": "checkpoint", "step": step, "path": str(path)})
    model.eval()
    after = eval_loss(raw_model, eval_items, pad_id) if eval_items else None
    if after is not None:
        last_eval = after
        emit({"event": "eval", "step": step, "eval_loss": after, "perplexity": math.exp(min(after, 50))})
    if accelerator.is_main_process:
        path = _save_checkpoint(raw_model, optimizer, scheduler, args, step, out)
        emit({"event": "checkpoint", "step": step, "path": str(path)})
        ppl = {k: None if v is None else math.exp(min(v, 50)) for k, v in (("after", last_eval), ("before", before))}
        events = read_progress(out) if args.resume else history  # a resumed run's curve starts at step 1 too
        curve = {e["step"]: e["loss"] for e in events if e.get("event") == "step"}  # a redone step: its last loss
        card = {"dataset": args.dataset, "metrics": {"eval_loss": last_eval, "eval_loss_before": before,
                                                      "perplexity": ppl["after"], "perplexity_before": ppl["before"],
                                                      "steps": step},
                "training": {**{k: v for k, v in asdict(args).items() if k not in ("output_dir",)},
                             "learning_rate": lr},
                "parameters": {k: counts[k] for k in ("trainable", "total", "percent")},
                "loss_curve": [[s, loss] for s, loss in sorted(curve.items())]}
        save_adapter(raw_model, out / "adapter", args.adapter_name, card=card)
    emit({"event": "stopped" if stopped else "done", "step": step, "eval_loss": last_eval,
          "adapter": str(out / "adapter")})
    return TrainResult(out / "adapter", step, stopped, before, after, counts, history)


def install_signal_handlers(stop: StopFlag) -> None:
    """SIGTERM/SIGINT finish the current step, save, and exit cleanly (main thread only)."""
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, stop.set)


def read_progress(out: str | os.PathLike) -> list[dict]:
    """The events a run has written so far (a reattaching UI reads this)."""
    file = Path(out) / PROGRESS_FILE
    if not file.exists():
        return []
    events = []
    for line in file.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return events


__all__ = ["TrainArgs", "TrainResult", "StopFlag", "train", "read_progress", "install_signal_handlers"]

"""One trainer for every method, on ``accelerate`` (so ``accelerate launch`` spreads it over GPUs/machines).

AdamW, warm-up then a cosine/linear/constant schedule, gradient accumulation, clipping, seed, eval every
N steps, checkpoints and resume, progress as JSON lines, a clean stop (SIGTERM, SIGINT or a STOP file).
The method's own training needs reach it through hooks (``extra_loss``, ``on_train_step``).

Crash safety: a checkpoint every ``save_every`` steps and at most ``save_minutes`` apart (the last
``keep_checkpoints`` are kept), each written atomically (``io.atomic_dir``) with the adapter, the optimizer, the LR
schedule, the RNG states and the data position, so ``--resume`` after ``kill -9`` ends with the adapter an
uninterrupted run writes. A failed write (a full disk) keeps the previous checkpoint, says so and training goes on.

Scale-out (``accelerate launch --num_processes N``): every global micro-batch (``batch_size`` x N rows) is drawn
from the one shuffled order all processes share, and process ``r`` trains on rows ``r::N`` of it; each process's
loss is weighted by its share of the batch's loss tokens, so DDP's gradient average is the gradient of the global
batch's token-mean loss, as one process with ``batch_size`` x N rows computes it. Evaluation is split over the
processes and summed; only the main process writes files. One process is exactly the single-process trainer.

The checkpoints are written and read by ``checkpoint``, the loss (labelled logits, packed attention,
``eval_loss``) is computed by ``loss``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
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
from safetensors.torch import load_file

from . import adapters as ad
from . import data as pdata

# re-exported (noqa: F401): the names that moved to .checkpoint and .loss stay importable from here
from .checkpoint import (
    CHECKPOINTS,  # noqa: F401
    OPTIMIZER_FILE,  # noqa: F401
    RNG_FILE,
    STATE_FILE,  # noqa: F401
    checkpoints,
    last_checkpoint,
    prune_checkpoints,
    readable_checkpoint,
    restore_optimizer,
    save_checkpoint,
    set_rng_state,
)
from .errors import ConfigError, PeftlabError
from .io import CONFIG_FILE, RUN_ADAPTER_DIR, load_adapter, save_adapter
from .loss import (
    PACKED_ATTENTION,  # noqa: F401
    eval_loss,
    labelled_logits,
    packing_isolates,
    restore_attention,
    use_packed_attention,
)
from .schema import fields_of, from_values, option, parse_values

PROGRESS_FILE = "progress.jsonl"
STOP_FILE = "STOP"
LOCK_FILE = "train.lock"  # held (flock) by the trainer writing a run folder; the system frees it when it dies
GROUP_WINDOW = 4  # micro-batches per length-grouped window of the shuffled order (padded runs)
DEBUG_ROWS_ENV = "PEFTLAB_DEBUG_ROWS"  # set: each process writes the train-row ids it used to rows-rank<r>.jsonl


@dataclass
class TrainArgs:
    """Everything a training run needs; the CLI flags and the app's form are generated from it (``schema``)."""

    method: str = option("lora", "PEFT method (see `peftlab methods`)")
    method_config: dict[str, Any] = option({}, "the method's config fields (on the command line: one flag each)")
    base_model: str | None = option(
        None, "base model: Hub id or local folder (default: the offline SmolLM2-135M-Instruct)", flag="base"
    )
    dataset: str = option("capitals-json", "built-in name or data file/folder")
    output_dir: str = option(
        "runs/adapter", "folder the adapter, checkpoints and progress are written to", flag="output"
    )
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
    save_every: int = option(50, "checkpoint every N steps (0 = by time and at the end only)")
    save_minutes: float = option(
        10.0, "also checkpoint when this many minutes have passed since the last checkpoint (0 = off)"
    )
    keep_checkpoints: int = option(2, "keep the last K checkpoints (0 = keep all)")
    max_length: int = option(256, "max tokens per row")
    eval_fraction: float = option(0.1, "held-out share when the data has no split")
    max_eval_samples: int = option(64, "cap on eval rows")
    loss_on: str = option("assistant", "assistant (reply tokens only) or all", choices=["assistant", "all"])
    dtype: str = option(
        "auto", "weights dtype (auto: bf16 on CUDA, else fp32)", choices=["auto", "float32", "bfloat16", "float16"]
    )
    device: str | None = option(None, "cpu, cuda, mps (default: best available)")
    threads: int | None = option(None, "CPU threads for torch (default: torch's)")
    packing: str = option(
        "auto",
        "pack a micro-batch's rows into one sequence, no padding (auto: when the method and task allow it, else "
        "padded batches; on: refuse a method or task that cannot; off: padded batches in the "
        "shuffled order)",
        choices=["auto", "on", "off"],
    )
    resume: bool = option(False, "continue from the last checkpoint in the output folder")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.save_every < 0 or not self.save_minutes >= 0 or self.keep_checkpoints < 0:
            raise ConfigError("save_every, save_minutes and keep_checkpoints must be 0 or more")
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
        rows = pdata.check_dataset(self.dataset)
        supported = ad.resolve_method(self.method).capabilities.task_types
        if rows is not None and (task := pdata.dataset_task(rows)) not in supported:
            raise ConfigError(f"{self.method} does not support {task} datasets (it supports {', '.join(supported)})")
        if self.packing == "on":
            caps = ad.resolve_method(self.method).capabilities
            if not caps.packable:
                why = f": {caps.pack_note}" if caps.pack_note else ""
                raise ConfigError(f"--packing on: {self.method} cannot train on packed rows{why}; use --packing auto")
            if rows is not None and pdata.dataset_task(rows) == "SEQ_CLS":
                raise ConfigError(
                    "--packing on: a classification (SEQ_CLS) dataset cannot be packed (each row is pooled on its "
                    "own); use --packing auto"
                )

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


def _batch_indices(n: int, batch_size: int, seed: int, skip: int = 0, lengths: list[int] | None = None):
    """Endless shuffled micro-batches of row indices; epoch e uses the permutation seeded by (seed, e).
    ``skip`` micro-batches are passed over without being built (the data position a resumed run starts at).
    With ``lengths``, each epoch's rows are length-grouped within windows of ``GROUP_WINDOW`` micro-batches
    (``data.length_grouped``: similar lengths share a batch, so less padding): every window holds exactly the rows
    of the shuffled order, so a run of k × ``GROUP_WINDOW`` micro-batches sees the same rows either way; still
    deterministic per epoch."""
    per_epoch = n // batch_size if n >= batch_size else 1
    epoch, first = divmod(skip, per_epoch)
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        if lengths is not None:
            order = pdata.length_grouped(
                order[: per_epoch * batch_size], lengths, batch_size, group=GROUP_WINDOW, seed=seed * 1000 + epoch
            )
        for i in range(first * batch_size, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield order[i : i + batch_size]
        epoch, first = epoch + 1, 0


def _batches(items: list[dict], batch_size: int, seed: int, pad_id: int, skip: int = 0):
    """Endless shuffled, collated micro-batches (see ``_batch_indices``)."""
    for idx in _batch_indices(len(items), batch_size, seed, skip):
        yield pdata.collate([items[j] for j in idx], pad_id)


def _loss_tokens(item: dict) -> int:
    """The positions of a row that carry loss (labels shift by one, as the model shifts them); 1 for SEQ_CLS."""
    if "labels" not in item:
        return 1
    return sum(1 for t in item["labels"][1:] if t != -100)


@contextlib.contextmanager
def _data_warnings():
    """The warnings ``data.encode_rows`` logs meanwhile (rows truncated to ``max_length``, rows dropped), as a list
    of messages; they are still logged as usual."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger = logging.getLogger("peftlab.data.encode")
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)


def _use_packing(args: TrainArgs, handle, task: str, model, emit) -> bool:
    """Whether this run trains on packed rows: ``packing`` on or auto, a CAUSAL_LM task, a method declaring
    ``packable``, and a model whose attention stays inside each packed row (probed on two short rows). ``auto``
    falls back to length-grouped padded batches with a status line saying why; ``on`` stops with the reason."""
    if args.packing == "off":
        return False
    why = ""
    if task != "CAUSAL_LM":
        why = "a classification (SEQ_CLS) dataset is trained on padded batches (each row is pooled on its own)"
    elif not handle.capabilities.packable:
        note = handle.capabilities.pack_note
        why = f"{handle.name} cannot train on packed rows" + (f" ({note})" if note else "")
    else:
        leak = packing_isolates(model, int(getattr(model.config, "vocab_size", 256) or 256))
        low_precision = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
        if not leak < (5e-2 if low_precision else 1e-3):  # a leak changes logits by far more than rounding
            why = (
                f"this model's attention does not keep packed rows apart (a row's logits change by {leak:.1e} of "
                f"the largest when packed with another; attention implementation "
                f"{getattr(model.config, '_attn_implementation', None)!r})"
            )
    if not why:
        return True
    if args.packing == "on":
        raise ConfigError(f"--packing on: {why}; use --packing auto")
    how = (
        "length-grouped padded batches"
        if args.grad_accum == 1
        else "padded batches (no length grouping with grad_accum)"
    )
    emit({"event": "status", "message": f"packing off: {why}; training on {how}"})
    return False


def _lock_run(out: Path) -> Any:
    """Hold ``out``'s ``LOCK_FILE`` for this trainer (an open file; closing it, or the process dying, frees it), or
    raise ``ConfigError`` when another process trains in ``out``: two trainers in one folder would interleave their
    checkpoints and progress."""
    lock = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        pid = lock.read().strip()
        lock.close()
        raise ConfigError(
            f"{out} is being trained by another process{f' (pid {pid})' if pid else ''}: stop it first, or train "
            "into another --output"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def is_training(out: str | os.PathLike) -> bool | None:
    """Whether a trainer holds run folder ``out`` now (``True``/``False``), or ``None`` when the folder has no
    ``LOCK_FILE`` (a run written before trainers locked their folder: unknown)."""
    path = Path(out) / LOCK_FILE
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            return False
    except FileNotFoundError:
        return None
    except OSError:
        return None


def train(
    args: TrainArgs,
    *,
    model=None,
    tokenizer=None,
    on_event: Callable[[dict], None] | None = None,
    stop: StopFlag | None = None,
) -> TrainResult:
    """Train adapter ``args.adapter_name`` of method ``args.method`` and save it to ``args.output_dir``.

    Under ``accelerate launch`` every process calls this; only the main one writes files and reports events."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .models import check_source, load_model

    if model is None:
        check_source(args.base_model)  # a missing folder or an uncached Hub id offline: said before any folder is made
    accelerator = Accelerator(gradient_accumulation_steps=args.grad_accum, cpu=str(args.device) == "cpu")
    main = accelerator.is_main_process
    out = Path(args.output_dir)
    if main and is_training(out):  # said before the model loads; open_run takes the lock for real
        _lock_run(out).close()  # raises, naming the folder (a trainer that has just ended freed it: go on)
    if stop is None:
        stop = StopFlag(out / STOP_FILE)
    elif stop.stop_file is None:
        stop.stop_file = out / STOP_FILE
    history: list[dict] = []
    files: dict[str, Any] = {"progress": None, "lock": None}
    pending: list[dict] = []  # events before the run folder exists (it is made once the data is encoded)

    def emit(event: dict) -> None:
        event = {"time": time.time(), **event}
        history.append(event)
        if not main:
            return
        if files["progress"] is None:
            pending.append(event)
        else:
            files["progress"].write(json.dumps(event) + "\n")
            files["progress"].flush()
        if on_event:
            on_event(event)

    def open_run() -> None:
        """Make the run folder and start progress.jsonl (with the events so far): called once the base model is
        loaded and the data encoded and checked, so a run refused by those leaves nothing behind."""
        if files["progress"] is not None:
            return
        out.mkdir(parents=True, exist_ok=True)
        if not main:
            return
        files["lock"] = _lock_run(out)  # before anything is written: the other trainer's files stay as they are
        (out / STOP_FILE).unlink(missing_ok=True)
        progress = open(out / PROGRESS_FILE, "a" if args.resume else "w")
        if args.resume and progress.tell() > 0:
            with open(out / PROGRESS_FILE, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by kill -9: end it, so the next event reads
                    progress.write("\n")
        for event in pending:
            progress.write(json.dumps(event) + "\n")
        progress.flush()
        pending.clear()
        files["progress"] = progress

    if main and out.is_dir() and not (out / PROGRESS_FILE).exists():
        open_run()  # a folder made for this run (a job's): its status shows from the start; nothing is overwritten
    try:
        return _train(args, model, tokenizer, emit, open_run, stop, out, history, accelerator, set_seed, load_model)
    except Exception as e:
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        raise
    finally:
        if files["progress"] is not None:
            files["progress"].close()
        if files["lock"] is not None:
            files["lock"].close()  # frees the folder for the next trainer (a resume)


def _train(
    args, model, tokenizer, emit, open_run, stop, out, history, accelerator, set_seed, load_model
) -> TrainResult:
    handle = ad.resolve_method(args.method)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    rows = pdata.load_rows(args.dataset)
    task = pdata.dataset_task(rows)
    labels = pdata.label_names(rows) if task == "SEQ_CLS" else None
    train_rows, eval_rows = pdata.split_rows(rows, args.eval_fraction, args.seed)
    eval_rows = eval_rows[: args.max_eval_samples]
    if not args.resume and (out / RUN_ADAPTER_DIR / CONFIG_FILE).exists():  # said before the long part starts
        emit(
            {
                "event": "status",
                "message": f"{out} holds the adapter of an earlier run: this run replaces it when it ends "
                "(--resume continues that run instead; another --output keeps it)",
            }
        )
    if model is None:
        emit({"event": "status", "message": "loading base model"})
        device = args.device or (str(accelerator.device) if world > 1 else None)  # each process: its own device
        model, tokenizer = load_model(
            args.base_model,
            task=task,
            dtype=args.dtype,
            device=device,
            method=handle,
            method_config=args.method_config,
            label_names=labels,
        )
    if tokenizer is None:
        raise PeftlabError("train(model=...) also needs tokenizer=")
    if ad.model_task(model) != task:
        raise PeftlabError(f"dataset {args.dataset} is a {task} dataset but the model is {ad.model_task(model)}")
    enc = dict(max_length=args.max_length, loss_on=args.loss_on, task=task, labels=labels)
    with _data_warnings() as notes:  # rows truncated or dropped: said in the progress too, not only on stderr
        train_items = pdata.encode_rows(train_rows, tokenizer, **enc)
    for note in notes:
        emit({"event": "status", "message": f"training data: {note}"})
    with _data_warnings() as notes:
        eval_items = pdata.encode_rows(eval_rows, tokenizer, **enc) if eval_rows else []
    for note in notes:
        emit({"event": "status", "message": f"evaluation data: {note}"})
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    global_micro = args.batch_size * world  # rows per micro-batch over all processes
    if world > 1 and len(train_items) < world:
        raise ConfigError(f"{len(train_items)} training rows cannot be shared by {world} processes")
    open_run()

    ckpt, state = readable_checkpoint(out, emit) if args.resume else (None, None)
    if ckpt is not None:
        load_adapter(model, ckpt, args.adapter_name, method=handle.name)
        start = state["step"]
        config = ad.entry(model, args.adapter_name)[1].config
        data = state.get("data") or {}
        emit(
            {
                "event": "status",
                "message": f"resuming from {ckpt.name} (step {start})",
                "resumed_from": start,
                "checkpoint": str(ckpt),
            }
        )
        if data.get("global_batch", global_micro) != global_micro:
            emit(
                {
                    "event": "status",
                    "message": f"the checkpoint was written with {data['global_batch']} rows per "
                    f"micro-batch, this run uses {global_micro}: the data order differs "
                    f"from an uninterrupted run's",
                }
            )
    else:
        if args.resume:
            emit({"event": "status", "message": f"no checkpoint in {out}; starting fresh"})
        config = ad.add_adapter(model, handle, args.method_config, args.adapter_name)
        start = 0
    ad.set_active(model, [args.adapter_name])
    trainable = ad.prepare_for_training(model, args.adapter_name)
    counts = ad.count_parameters(model, trainable)
    packed = _use_packing(args, handle, task, model, emit)
    if packed:
        use_packed_attention(model)
    labelled = labelled_logits(model)
    lr = args.learning_rate or handle.train_defaults.get("learning_rate", 2e-3)

    optimizer = ad.make_optimizer(model, args.adapter_name, list(trainable.values()), lr, args.weight_decay)
    warmup = int(args.warmup_ratio * args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.lr_scheduler, warmup, args.max_steps))
    if ckpt is not None:
        restore_optimizer(optimizer, ckpt)
        with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping a step
            warnings.simplefilter("ignore")
            for _ in range(start):
                scheduler.step()
    # the schedule stays ours: it counts optimizer steps of the global batch (accelerate's wrapper would step it
    # once per process)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type == DistributedType.FSDP  # its forward must go through the wrapper
    eval_model = model if sharded else raw_model  # DDP's forward would sync buffers: evaluate the plain model
    device = accelerator.device

    emit(
        {
            "event": "start",
            "method": handle.name,
            "config": config.to_dict(),
            "task": task,
            "steps": args.max_steps,
            "start_step": start,
            "learning_rate": lr,
            "train_rows": len(train_items),
            "eval_rows": len(eval_items),
            "num_processes": world,
            "global_batch": global_micro * args.grad_accum,
            "packing": packed,
            **counts,
        }
    )
    before = eval_loss(eval_model, eval_items, pad_id, accelerator=accelerator) if eval_items and start == 0 else None
    if before is not None:
        emit({"event": "eval", "step": 0, "eval_loss": before, "perplexity": math.exp(min(before, 50))})

    if ckpt is not None and (ckpt / RNG_FILE).exists():  # the dropout masks an uninterrupted run draws next
        set_rng_state(load_file(str(ckpt / RNG_FILE)), state.get("rng") or {})
    # padded batches (methods that cannot pack, classification) are length-grouped within small windows of the
    # shuffled order: larger windows (16 batches) changed which rows a short run sees, and 12-step soft-prompt runs
    # on SmolLM2 learned measurably less
    # off: the plain shuffled order (the reference). Not with gradient accumulation: a step's micro-batches each
    # count equally, so all-short and all-long micro-batches in one step would weigh short rows' tokens far more
    groupable = not packed and args.packing != "off" and args.grad_accum == 1
    grouped = groupable
    order = f"grouped-{GROUP_WINDOW}" if grouped else "shuffled"  # kept in each checkpoint: resume follows it
    if ckpt is not None and (was := data.get("order", "shuffled")) != order:  # e.g. written before the order was kept
        if groupable and was in ("shuffled", f"grouped-{GROUP_WINDOW}"):
            grouped, order = was != "shuffled", was
            note = f"the checkpoint's batches came in the {was} order: resuming in it, as the interrupted run would"
        else:
            note = (
                f"the checkpoint's batches came in the {was} order, this run's come in the {order} order: the data "
                "order differs from an uninterrupted run's"
            )
        emit({"event": "status", "message": note})
    lengths = [len(it["input_ids"]) for it in train_items] if grouped else None
    batches = _batch_indices(len(train_items), global_micro, args.seed, skip=start * args.grad_accum, lengths=lengths)
    rows_log = None
    if os.environ.get(DEBUG_ROWS_ENV):  # a debugging aid (and the multi-process test's witness): rows per process
        rows_log = open(out / f"rows-rank{rank}.jsonl", "a" if args.resume else "w")
    model.train()
    step, t0, tokens, stopped = start, time.time(), 0, False
    last_eval, last_save = before, time.time()

    def save(at: int) -> None:
        """A checkpoint (main process only); a failed write leaves the previous one and is reported."""
        nonlocal last_save
        last_save = time.time()
        if not main:
            return
        previous = last_checkpoint(out)
        try:
            path = save_checkpoint(
                raw_model,
                optimizer,
                scheduler,
                args,
                at,
                out,
                {
                    "micro_batches": at * args.grad_accum,
                    "global_batch": global_micro,
                    "num_processes": world,
                    "order": order,
                },
            )
        except OSError as e:
            kept = f"the previous checkpoint {previous.name} is intact" if previous else "there is no earlier one"
            emit(
                {
                    "event": "status",
                    "message": f"checkpoint at step {at} failed ({e}); {kept}; training goes on",
                    "checkpoint_failed": at,
                    "kept": str(previous) if previous else None,
                }
            )
            return
        prune_checkpoints(out, args.keep_checkpoints)
        emit({"event": "checkpoint", "step": at, "path": str(path)})

    while step < args.max_steps:
        due = bool(args.save_minutes) and time.time() - last_save >= args.save_minutes * 60
        halt = bool(stop)
        if world > 1:  # every process stops (and checkpoints) at the same step
            flags = accelerator.reduce(torch.tensor([float(halt), float(due)], device=device), "sum")
            halt, due = bool(flags[0] > 0), bool(flags[1] > 0)
        if halt:
            stopped = True
            break
        loss_sum, lr_now = 0.0, scheduler.get_last_lr()[0]  # the LR this step uses
        for micro in range(args.grad_accum):
            idx = next(batches)
            mine = idx[rank::world]
            if rows_log is not None:
                rows_log.write(json.dumps({"step": step + 1, "micro": micro, "rank": rank, "rows": mine}) + "\n")
                rows_log.flush()
            micro_rows = [train_items[j] for j in mine]
            made = pdata.pack(micro_rows) if packed else pdata.collate(micro_rows, pad_id)
            batch = {k: v.to(device) for k, v in made.items()}
            tokens += sum(len(train_items[j]["input_ids"]) for j in idx)
            if world > 1:  # this process's share of the global batch's loss tokens
                n_mine = sum(_loss_tokens(train_items[j]) for j in mine)
                n_all = sum(_loss_tokens(train_items[j]) for j in idx)
            with accelerator.accumulate(model):
                loss = labelled.loss(model, batch)[0]
                report = loss.detach()
                if world > 1:
                    report = accelerator.reduce(report * n_mine, "sum") / max(n_all, 1)
                    loss = loss * (world * n_mine / max(n_all, 1))  # DDP averages: the global token mean
                extra = ad.extra_loss(raw_model, args.adapter_name)
                if extra is not None:
                    loss = loss + extra
                    report = report + extra.detach()
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(list(trainable.values()), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    ad.on_train_step(raw_model, args.adapter_name, step + 1, args.max_steps)
                scheduler.step() if accelerator.sync_gradients else None
                optimizer.zero_grad()
            loss_sum += float(report)
        step += 1
        elapsed = time.time() - t0
        done = step - start
        emit(
            {
                "event": "step",
                "step": step,
                "loss": loss_sum / args.grad_accum,
                "lr": lr_now,
                "tokens_per_s": tokens / max(elapsed, 1e-9),
                "elapsed_s": elapsed,
                "eta_s": elapsed / done * (args.max_steps - step),
            }
        )
        if args.eval_every and step % args.eval_every == 0 and eval_items and step < args.max_steps:
            last_eval = eval_loss(eval_model, eval_items, pad_id, accelerator=accelerator)
            emit({"event": "eval", "step": step, "eval_loss": last_eval, "perplexity": math.exp(min(last_eval, 50))})
            model.train()
        if step < args.max_steps and ((args.save_every and step % args.save_every == 0) or due):
            save(step)
    if rows_log is not None:
        rows_log.close()
    model.eval()
    after = eval_loss(eval_model, eval_items, pad_id, accelerator=accelerator) if eval_items else None
    if after is not None:
        last_eval = after
        emit({"event": "eval", "step": step, "eval_loss": after, "perplexity": math.exp(min(after, 50))})
    save(step)
    if main:
        ppl = {k: None if v is None else math.exp(min(v, 50)) for k, v in (("after", last_eval), ("before", before))}
        events = read_progress(out) if args.resume else history  # a resumed run's curve starts at step 1 too
        curve = {e["step"]: e["loss"] for e in events if e.get("event") == "step"}  # a redone step: its last loss
        card = {
            "dataset": args.dataset,
            "metrics": {
                "eval_loss": last_eval,
                "eval_loss_before": before,
                "perplexity": ppl["after"],
                "perplexity_before": ppl["before"],
                "steps": step,
            },
            "training": {
                **{k: v for k, v in asdict(args).items() if k not in ("output_dir",)},
                "learning_rate": lr,
                "num_processes": world,
                "global_batch": global_micro * args.grad_accum,
            },
            "parameters": {k: counts[k] for k in ("trainable", "total", "percent")},
            "loss_curve": [[s, loss] for s, loss in sorted(curve.items())],
        }
        save_adapter(raw_model, out / RUN_ADAPTER_DIR, args.adapter_name, card=card)
    accelerator.wait_for_everyone()
    emit(
        {
            "event": "stopped" if stopped else "done",
            "step": step,
            "eval_loss": last_eval,
            "adapter": str(out / RUN_ADAPTER_DIR),
        }
    )
    restore_attention(raw_model)
    return TrainResult(out / RUN_ADAPTER_DIR, step, stopped, before, after, counts, history)


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


__all__ = [
    "TrainArgs",
    "TrainResult",
    "StopFlag",
    "train",
    "read_progress",
    "install_signal_handlers",
    "is_training",
    "checkpoints",
    "last_checkpoint",
]

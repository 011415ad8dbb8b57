"""Training checkpoints: ``checkpoints/step-NNNNNN`` in a run's folder, each written atomically with the adapter,
the optimizer state, the LR schedule position, the RNG states and the data position; finding the newest readable
one, restoring the optimizer and the RNGs from it, and pruning old ones.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_dir, read_adapter, save_adapter

if TYPE_CHECKING:
    from .train import TrainArgs

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last: a checkpoint folder holding it is complete
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a training step may draw from: torch (CPU and each CUDA device), Python's, NumPy's."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    version, py_state, gauss = random.getstate()
    scalars: dict[str, Any] = {"python": [version, list(py_state), gauss]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
        scalars["numpy"] = [name, int(pos), int(has_gauss), float(cached)]
    except ImportError:  # pragma: no cover - numpy comes with transformers
        pass
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in scalars:
        version, py_state, gauss = scalars["python"]
        random.setstate((version, tuple(py_state), gauss))
    if "numpy" in scalars and "numpy" in tensors:
        import numpy as np

        name, pos, has_gauss, cached = scalars["numpy"]
        np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    model, optimizer, scheduler, args: TrainArgs, step: int, out: Path, data: dict | None = None
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically: the adapter (PEFT format), the optimizer state, the schedule
    position, the RNG states and the data position. Raises ``OSError`` when the write fails; the folders already
    there are untouched then."""
    tensors = {}
    for idx, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
    rng_tensors, rng_scalars = _rng_state()
    scalars = {
        "step": step,
        "scheduler": scheduler.state_dict()["last_epoch"],
        "args": asdict(args),
        "data": data or {"micro_batches": step * args.grad_accum, "global_batch": args.batch_size, "num_processes": 1},
        "rng": rng_scalars,
        "time": time.time(),
    }

    def write(tmp: Path) -> None:
        save_adapter(model, tmp, args.adapter_name)
        if tensors:
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        save_file(rng_tensors, str(tmp / RNG_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(scalars, indent=2, default=str))

    return atomic_dir(out / CHECKPOINTS / f"step-{step:06d}", write)


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints in ``out``, oldest first."""
    return sorted(p for p in (Path(out) / CHECKPOINTS).glob("step-*") if (p / STATE_FILE).exists())


def last_checkpoint(out: Path) -> Path | None:
    folders = checkpoints(out)
    return folders[-1] if folders else None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the last ``keep`` checkpoints (0: all); drop the leftovers of writes a crash cut short."""
    folders = checkpoints(out)
    for old in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in (out / CHECKPOINTS).glob(".step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def readable_checkpoint(out: Path, emit) -> tuple[Path, dict] | tuple[None, None]:
    """The newest checkpoint whose state and adapter read back (an older one when the newest is damaged)."""
    for ckpt in reversed(checkpoints(out)):
        try:
            state = json.loads((ckpt / STATE_FILE).read_text())
            read_adapter(ckpt)
            if (ckpt / OPTIMIZER_FILE).exists():
                load_file(str(ckpt / OPTIMIZER_FILE))
            return ckpt, state
        except Exception as e:  # a damaged checkpoint: say so, try the one before it
            emit(
                {
                    "event": "status",
                    "message": f"checkpoint {ckpt.name} is unreadable ({type(e).__name__}: {e}); trying an older one",
                }
            )
    return None, None


def restore_optimizer(optimizer, ckpt: Path) -> None:
    file = ckpt / OPTIMIZER_FILE
    if not file.exists():
        return
    tensors = load_file(str(file))
    state = optimizer.state_dict()
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state["state"].setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict(state)

"""Adapters on disk, in the PEFT format: atomic saves, safetensors-only loads."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .adapters import add_adapter, entry, model_task, task_head_parameters
from .errors import AdapterError, AdapterMismatchError, ConfigError
from .method import AdapterWeights, MethodConfig
from .plugins import MethodHandle, get_method, registry
from .recipe import RECIPE_FILE, is_recipe, load_recipe

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
EXTRA_FILE = "peftlab_extra.safetensors"
META_FILE = "peftlab.json"
CARD_FILE = "README.md"
RUN_ADAPTER_DIR = "adapter"  # a training run's folder keeps its final adapter here
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FINGERPRINT_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
)


def fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """The base-model facts an adapter depends on (checked when it is loaded)."""
    cfg = model.config
    return {k: getattr(cfg, k) for k in FINGERPRINT_KEYS if getattr(cfg, k, None) is not None}


def base_model_id(model: torch.nn.Module) -> str:
    return getattr(model, "peftlab_base_id", None) or getattr(model.config, "_name_or_path", "") or "unknown"


@dataclass
class AdapterFiles:
    """An adapter read from disk, not yet applied to a model."""

    path: Path
    method: MethodHandle
    config: MethodConfig
    weights: AdapterWeights
    peft_config: dict[str, Any]
    meta: dict[str, Any]

    def base_options(self) -> dict[str, Any]:
        """What ``models.load_model`` needs besides the base to load one this adapter fits: its ``task``, the
        ``method`` when the method loads its own (quantized) base, and ``num_labels`` of a classifier's head."""
        task = self.peft_config.get("task_type") or "CAUSAL_LM"
        out: dict[str, Any] = {"task": task}
        if self.method.capabilities.needs_quantized_base:
            out["method"] = self.method
        if task == "SEQ_CLS":
            out["num_labels"] = self.meta.get("base_fingerprint", {}).get("num_labels") or 2
        return out


def _umask() -> int:
    """The process umask, read without changing it where the system allows (``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir``/``open`` would (0755/0644 under umask 022):
    some writers (safetensors) create their files 0600, unreadable to others on a shared machine."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            file = os.path.join(root, f)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~mask)


def atomic_dir(path: Path, write) -> Path:
    """Write a folder with ``write(tmp)`` then swap it into place; the old one survives any failure.
    Its files get the usual modes (``_usual_modes``). A ``path`` that is a file is refused, untouched."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdapterError(f"{path} is a file, not a folder; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _usual_modes(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():  # stopped between the two renames: the old folder goes back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


def check_replaceable(path: str | os.PathLike, holds: Callable[[Path], bool], what: str, writing: str) -> Path:
    """``path`` if ``atomic_dir`` may write ``writing`` there: a new or empty folder, or one that already holds
    ``what`` (``holds(path)``), which is replaced whole. Anything else is a ``ConfigError`` naming the folder:
    ``atomic_dir`` swaps the whole folder, so the other files of, say, ``--output ~/Documents`` would be deleted."""
    path = Path(path).expanduser()
    if path.is_dir() and any(path.iterdir()) and not holds(path):
        raise ConfigError(
            f"output folder {path} is not empty and holds no {what}; writing {writing} there would delete its "
            f"files. Choose a new or empty output folder (or remove {path} first)"
        )
    return path


def holds_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an adapter's own folder (``adapter_config.json`` in it)."""
    return (Path(path) / CONFIG_FILE).is_file()


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` if a folder can be made or written there, else a ``ConfigError`` naming the reason (checked before a
    run or save starts, so a refused one leaves nothing behind)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is a file, not a folder; choose another output folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output folder {path} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {path} cannot be written: {existing} is read-only (no write permission)")
    return path


def save_adapter(
    model: torch.nn.Module,
    path: str | os.PathLike,
    name: str = "default",
    *,
    base_model: str | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Save adapter ``name`` of ``model`` to folder ``path`` in the PEFT format (atomically).

    ``card`` may carry ``metrics``, ``dataset``, ``training`` (dicts/strings) for the model card.
    """
    handle, e = entry(model, name)
    weights = handle.hook("save")(model=model, config=e.config, adapter_name=name)
    if not isinstance(weights, AdapterWeights):
        raise AdapterError(f"method {handle.name!r} save hook returned {type(weights).__name__}, not AdapterWeights")
    head = {
        f"{handle.module_prefix}{k}": v.detach().clone().contiguous() for k, v in task_head_parameters(model).items()
    }
    base = base_model or base_model_id(model)
    task = model_task(model)
    cfg = {
        **e.config.to_dict(),
        "peft_type": handle.peft_type,
        "task_type": task,
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
    }
    heads = list(getattr(model, "peftlab_new_modules", ()) or ())
    if heads:
        cfg["modules_to_save"] = heads
    meta = {
        "method": handle.name,
        "plugin": handle.plugin,
        "peftlab_version": __version__,
        "adapter_name": name,
        "base_model": base,
        "base_fingerprint": fingerprint(model),
        "task_type": task,
        "extra_file": EXTRA_FILE if weights.extra else None,
    }
    if card:
        meta["card"] = card  # what the Hub card is built from (metrics, training settings, loss curve)

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file({**weights.tensors, **head}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if weights.extra:
            save_file(dict(weights.extra), str(tmp / EXTRA_FILE), metadata={"format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        (tmp / CARD_FILE).write_text(model_card(handle, cfg, card or {}))

    return atomic_dir(Path(path), write)


def model_card(handle: MethodHandle, cfg: dict[str, Any], info: dict[str, Any]) -> str:
    """A Hub model card: YAML header PEFT/Hub tooling understands, then a short description."""
    base = cfg["base_model_name_or_path"]
    tags = ["peftlab", f"peftlab-{handle.name}", f"base_model:adapter:{base}"]
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "library_name: peft",
        f"pipeline_tag: {'text-generation' if cfg['task_type'] == 'CAUSAL_LM' else 'text-classification'}",
        "tags:",
        *[f"- {json.dumps(t)}" for t in tags],
        "---",
        "",
        f"# {handle.name} adapter for {base}",
        "",
        f"A {handle.description or handle.name} adapter trained with "
        f"[peftlab](https://github.com/peftlab) (method plugin `{handle.plugin}`).",
        "",
    ]
    if handle.peft_type.upper() == handle.peft_type and handle.peft_type in _PEFT_TYPES:
        lines += [
            "It is saved in the PEFT format and loads with `peft`:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), 'PATH')",
            "```",
            "",
        ]
    else:
        lines += [
            f"`peft` has no `{handle.peft_type}` method: load it with peftlab and the "
            f"`{handle.plugin}` plugin (`peftlab generate --adapter PATH ...`).",
            "",
        ]
    for key in ("dataset", "metrics", "training"):
        if info.get(key):
            lines += [f"## {key.capitalize()}", "", "```json", json.dumps(info[key], indent=2, default=str), "```", ""]
    lines += ["## Config", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


_PEFT_TYPES = {"LORA", "ADALORA", "PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "IA3", "LOHA", "LOKR", "OFT"}


def record_evaluation(folder: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Keep ``peftlab.evaluate.evaluate``'s ``result`` in the adapter's ``peftlab.json`` (key ``evaluation``), so its
    model card can show it; the file is replaced atomically. A composition recipe keeps it in its
    ``composition.json`` (a recipe has no ``peftlab.json``)."""
    from .recipe import RECIPE_FILE, is_recipe, read_recipe

    if is_recipe(folder):
        read_recipe(folder)  # a readable recipe, or a clear error before anything is written
        path = Path(folder) / RECIPE_FILE
    else:
        path = read_adapter(folder).path / META_FILE
    meta = _read_json(path) if path.exists() else {}
    meta["evaluation"] = result
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{file}: expected a JSON object")
    return data


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{file}: corrupt or unreadable safetensors file ({e})") from None


def adapter_in(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a training run's folder (no adapter of its own, one in ``RUN_ADAPTER_DIR``) that
    adapter's folder."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists() and (path / RUN_ADAPTER_DIR / CONFIG_FILE).exists():
        return path / RUN_ADAPTER_DIR
    return path


def read_adapter(path: str | os.PathLike, method: str | None = None) -> AdapterFiles:
    """Read and validate an adapter folder (ours or one saved by ``peft``). Never unpickles."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    if (path / RECIPE_FILE).is_file() and not (path / CONFIG_FILE).exists():
        raise AdapterError(
            f"{path} is a composition recipe (a stack of saved adapters, {RECIPE_FILE}), not one adapter: load it "
            "with peftlab.load_adapter(model, folder) or --adapter"
        )
    path = adapter_in(path)
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.exists():
        raise AdapterError(f"{path} is not an adapter folder: {CONFIG_FILE} is missing")
    if not weights_file.exists():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise AdapterError(
                f"{path} holds only pickle weights ({', '.join(pickles)}); peftlab never unpickles, since a "
                f"pickle can run code. Convert it to {WEIGHTS_FILE} in a trusted environment "
                f"(peft: model.save_pretrained(dir, safe_serialization=True))."
            )
        raise AdapterError(f"{path}: {WEIGHTS_FILE} is missing")
    peft_cfg = _read_json(cfg_file)
    meta = _read_json(path / META_FILE) if (path / META_FILE).exists() else {}
    peft_type = peft_cfg.get("peft_type")
    if not peft_type:
        raise AdapterError(f"{cfg_file}: no peft_type")
    if method:
        handle = get_method(method)
    elif meta.get("method"):
        handle = get_method(meta["method"])
    else:
        handle = registry().for_peft_type(str(peft_type), peft_cfg)
    if str(peft_type) != handle.peft_type:
        raise AdapterError(
            f"{cfg_file}: peft_type {peft_type!r} does not match method {handle.name!r} ({handle.peft_type})"
        )
    try:
        config = handle.config_class.from_dict(peft_cfg, source=str(cfg_file))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{cfg_file}: {e}") from None
    tensors = _read_tensors(weights_file)
    extra_file = path / EXTRA_FILE
    extra = _read_tensors(extra_file) if extra_file.exists() else {}
    return AdapterFiles(path, handle, config, AdapterWeights(tensors, extra), peft_cfg, meta)


def check_base(files: AdapterFiles, model: torch.nn.Module) -> None:
    """Refuse an adapter whose recorded base-model facts differ from ``model``'s."""
    expected = files.meta.get("base_fingerprint") or {}
    actual = fingerprint(model)
    diff = [f"{k}: adapter {v} vs model {actual[k]}" for k, v in expected.items() if k in actual and actual[k] != v]
    if diff:
        raise AdapterMismatchError(
            f"adapter {files.path} was made for another base model "
            f"({files.meta.get('base_model', 'unknown')}): " + "; ".join(diff)
        )
    task = files.peft_config.get("task_type")
    if task and task != model_task(model):
        raise AdapterMismatchError(f"adapter {files.path} is for {task} but the model is {model_task(model)}")


def load_adapter(
    model: torch.nn.Module,
    path: str | os.PathLike,
    name: str | None = None,
    *,
    method: str | None = None,
    activate: bool = True,
) -> str:
    """Load an adapter folder into ``model`` under ``name`` (default: its saved name or "default").

    A composition recipe's folder (``composition.json``, see ``peftlab.recipe``) loads all its parents, weighted,
    as the group ``name`` (default: the recipe's name), which ``set_active`` and friends take like an adapter."""
    if is_recipe(path):
        if method:
            raise ConfigError(f"{path} is a composition recipe: its parents name their methods; do not pass method=")
        return load_recipe(model, path, name, activate=activate)
    files = read_adapter(path, method=method)
    check_base(files, model)
    name = name or files.meta.get("adapter_name") or "default"
    heads = {k: p for k in files.weights.tensors if (p := _head_param(k, files.peft_config)) is not None}
    weights = AdapterWeights({k: v for k, v in files.weights.tensors.items() if k not in heads}, files.weights.extra)
    add_adapter(model, files.method, files.config, name, activate=activate)
    files.method.hook("load")(model=model, config=files.config, adapter_name=name, weights=weights)
    if heads:
        _load_head(model, {param: files.weights.tensors[k] for k, param in heads.items()}, files.path)
    return name


HEAD_PREFIXES = ("base_model.model.", "base_model.")  # PEFT's tuner layout, then its prompt-learning layout


def _head_param(key: str, peft_cfg: dict) -> str | None:
    """The model parameter a saved task-head tensor belongs to, or ``None`` when ``key`` is no head tensor."""
    heads = peft_cfg.get("modules_to_save") or []
    for prefix in HEAD_PREFIXES:
        name = key.removeprefix(prefix)
        if name != key and any(name.startswith(f"{h}.") for h in heads):
            return name
    return None


def _load_head(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for pname, value in tensors.items():
            if pname not in params or params[pname].shape != value.shape:
                raise AdapterMismatchError(f"{path}: task-head tensor {pname} does not fit the model")
            params[pname].copy_(value.to(params[pname].dtype))

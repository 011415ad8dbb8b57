"""The model card an adapter gets on the Hugging Face Hub: the Hub's YAML header for PEFT adapters, then what the
adapter is, its metrics, training settings, loss curve (a PNG beside the card) and how to load it.

Built from the adapter folder alone (``adapter_config.json`` and, when peftlab saved it, ``peftlab.json`` whose
``card`` entry the trainer fills), so a folder saved by ``peft`` gets a card too, with fewer sections. No token
ever reaches a card: keys that name secrets are dropped and token-shaped text is blanked.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from peftlab import PeftlabError, get_method, registry
from peftlab.io import _PEFT_TYPES, CONFIG_FILE, META_FILE, WEIGHTS_FILE, adapter_in
from peftlab.models import DEFAULT_MODEL_ID

LOSS_CURVE_FILE = "loss_curve.png"
PEFTLAB_URL = "https://github.com/peftlab"
PIPELINE_TAGS = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification"}
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# a key naming a secret ("token", "hf_token", "use_auth_token", "api_key"), not "num_virtual_tokens" or "token_dim"
SECRET_KEY = re.compile(r"(?:^|_)(?:token|secret|password|passwd|api_?key|credentials?|auth)$", re.I)
TOKEN_TEXT = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
LOCAL_PATH = re.compile(r"^(?:~|/|\\\\|[A-Za-z]:[\\/])")  # absolute (or home) paths, POSIX or Windows
PATH_PARTS = re.compile(r"[\\/]")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# keys of adapter_config.json that say nothing about the method's settings
PEFT_BOILERPLATE = {
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "peft_type",
    "task_type",
    "modules_to_save",
    "auto_mapping",
    "peft_version",
}
# training settings: shown first in this order, then any others not in TRAINING_HIDDEN
TRAINING_ORDER = (
    "method",
    "dataset",
    "max_steps",
    "learning_rate",
    "lr_scheduler",
    "warmup_ratio",
    "batch_size",
    "grad_accum",
    "max_length",
    "loss_on",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "dtype",
    "eval_fraction",
    "max_eval_samples",
)
TRAINING_HIDDEN = {
    "output_dir",
    "base_model",
    "method_config",
    "device",
    "threads",
    "resume",
    "adapter_name",
    "eval_every",
    "save_every",
}


@dataclass
class Card:
    """A model card: ``text`` is the README.md, ``files`` what it links to (``{"loss_curve.png": bytes}``)."""

    text: str
    files: dict[str, bytes] = field(default_factory=dict)


def build_card(
    adapter_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str | None = None,
    extra_tags: tuple[str, ...] | list[str] = (),
    base_model: str | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Card:
    """The Hub model card of the adapter in ``adapter_dir`` (a training run's folder resolves to ``adapter/``).

    ``repo_id`` names the repo in the load snippets; ``license`` goes in the header; ``base_model`` overrides the
    recorded base (e.g. a Hub id for a base that was trained from a local folder); ``evaluation`` is the result of
    ``peftlab.evaluate.evaluate`` (base vs adapted; default: what ``peftlab eval --record`` kept in ``peftlab.json``)
    and adds or replaces the metrics the trainer recorded.
    """
    folder = adapter_in(adapter_dir)
    cfg = _read_json(folder / CONFIG_FILE)
    if cfg is None:
        raise PeftlabError(f"{folder} is not an adapter folder: {CONFIG_FILE} is missing or unreadable")
    meta = _read_json(folder / META_FILE) or {}
    info = _clean(meta.get("card") or {})
    evaluation = evaluation or meta.get("evaluation")  # `peftlab eval --record` keeps its result there
    facts = _Facts.of(folder, cfg, meta, info, base_model, repo_id)
    metrics = {**(info.get("metrics") or {}), **_from_evaluation(evaluation)}
    files: dict[str, bytes] = {}
    curve = [(int(s), float(v)) for s, v in info.get("loss_curve") or [] if v is not None]
    if curve:
        png = loss_curve_png(curve, metrics)
        if png:
            files[LOSS_CURVE_FILE] = png
    header = _header(facts, info, license, extra_tags)
    body = [
        *_intro(facts, info, metrics),
        *_metrics(facts, metrics, evaluation),
        *_curve_section(curve, files),
        *_training(facts, info),
        *_config(cfg),
        *_usage(facts, info),
        *_versions(meta),
    ]
    return Card(_scrub(header + "\n" + "\n".join(body).rstrip() + "\n"), files)


@dataclass
class _Facts:
    """What every section needs to know about the adapter."""

    method: str  # peftlab's method name ("lora"), or the peft_type in lowercase when no method is known
    description: str | None
    plugin: str | None  # the distribution that provides the method (peftlab-adapter)
    peft_type: str
    task: str
    base: str  # as recorded (a Hub id or a local folder)
    base_hub: str | None  # the base when it reads as a Hub id
    repo: str  # the repo id ("" when none was given: the snippets then load a folder)
    title: str
    num_labels: int | None
    by_peftlab: bool

    @classmethod
    def of(cls, folder: Path, cfg: dict, meta: dict, info: dict, base_model: str | None, repo_id: str | None):
        peft_type = str(cfg.get("peft_type") or "UNKNOWN")
        handle = None
        try:
            handle = get_method(meta["method"]) if meta.get("method") else registry().for_peft_type(peft_type, cfg)
        except PeftlabError:  # the method is not installed here: the files still say enough
            pass
        method = str(meta.get("method") or (handle.name if handle else peft_type.lower()))
        plugin = meta.get("plugin") or (handle.plugin if handle else None)
        base = str(base_model or cfg.get("base_model_name_or_path") or meta.get("base_model") or "")
        base_hub = base if _is_hub_id(base) else None
        task = str(cfg.get("task_type") or meta.get("task_type") or "CAUSAL_LM")
        title = repo_id.split("/")[-1] if repo_id else f"{method} adapter for {_shown(base) or 'a language model'}"
        return cls(
            method,
            handle.description if handle else None,
            plugin,
            peft_type,
            task,
            base,
            base_hub,
            repo_id or "",
            title,
            _num_labels(folder, cfg) if task == "SEQ_CLS" else None,
            bool(meta),
        )


def _read_json(file: Path) -> dict | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _clean(value: Any) -> Any:
    """``value`` without any key that names a secret (a token must never reach a card)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def public_json(value: Any) -> Any:
    """``value`` (JSON) as it may leave this machine: keys that name secrets dropped, token-shaped text blanked,
    and a string that is an absolute local path cut to its last part (``./name``, as the card shows a local base):
    a path on this machine means nothing elsewhere and tells who made it."""
    if isinstance(value, dict):
        return {k: public_json(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [public_json(v) for v in value]
    if isinstance(value, str):
        text = _scrub(value)
        if LOCAL_PATH.match(text):
            text = "./" + (PATH_PARTS.split(text.rstrip("/\\"))[-1] or "local")
        return text
    return value


def public_meta(meta: dict) -> dict:
    """``peftlab.json`` as ``push`` uploads it: ``public_json``, and a composed adapter's parents without the local
    folders they were read from (their Hub ids, commits and sha256 stay)."""
    out = public_json(meta)
    parents = (out.get("composition") or {}).get("parents") if isinstance(out.get("composition"), dict) else None
    if isinstance(parents, list):
        out["composition"]["parents"] = [
            {k: v for k, v in p.items() if k != "path"} if isinstance(p, dict) else p for p in parents
        ]
    return out


def is_local_base(base: str | None) -> bool:
    """Whether an adapter's recorded base is a folder of this machine (not a Hub id others can load)."""
    return bool(base) and base != "unknown" and not _is_hub_id(str(base))


def _scrub(text: str) -> str:
    for name in TOKEN_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return TOKEN_TEXT.sub("hf_***", text)


def _is_hub_id(text: str) -> bool:
    if not text or text == "unknown" or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def _shown(base: str) -> str:
    """The base as the card names it: a Hub id as is, a local folder by its name only (no home paths)."""
    return base if not base or _is_hub_id(base) else f"./{Path(base).name}"


def _num_labels(folder: Path, cfg: dict) -> int | None:
    """Rows of the saved classification head (read from the safetensors header, no tensors loaded)."""
    heads = cfg.get("modules_to_save") or []
    try:
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:
            for key in f.keys():
                if key.endswith(".weight") and any(f".{h}." in f".{key}" for h in heads):
                    return int(f.get_slice(key).get_shape()[0])
    except Exception:  # noqa: BLE001 - a card is still useful without it
        return None
    return None


def _tag(text: str) -> str:
    return text.lower().replace("_", "-")


def _header(facts: _Facts, info: dict, license: str | None, extra_tags) -> str:
    from huggingface_hub import ModelCardData

    tags = ["peftlab", _tag(facts.method), _tag(facts.peft_type)]
    if facts.base_hub:
        tags.append(f"base_model:adapter:{facts.base_hub}")
    tags += [str(t) for t in extra_tags]
    dataset = str(info.get("dataset") or "")
    data = ModelCardData(
        base_model=facts.base_hub,
        library_name="peft",
        license=license or None,
        pipeline_tag=PIPELINE_TAGS.get(facts.task),
        datasets=[dataset] if _is_hub_dataset(dataset) else None,
        tags=list(dict.fromkeys(t for t in tags if t)),
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _is_hub_dataset(name: str) -> bool:
    return name.count("/") == 1 and _is_hub_id(name) and not name.lower().endswith(DATA_SUFFIXES)


def _dataset_phrase(name: str) -> str:
    if not name:
        return ""
    from peftlab.data import builtin_datasets

    builtin = builtin_datasets().get(name)
    if builtin:
        return f"peftlab's built-in dataset `{name}` ({builtin.description})"
    if _is_hub_dataset(name):
        return f"the Hub dataset [{name}](https://huggingface.co/datasets/{name})"
    return f"a local dataset (`{Path(name).name}`)"


def _looks_local(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith((".", "~")) or name.lower().endswith(DATA_SUFFIXES)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _params_phrase(params: dict) -> str | None:
    """``"12,288 (0.31% of 3,964,032)"``, or ``None`` when the counts are unknown."""
    if not params or params.get("trainable") is None:
        return None
    text = f"{int(params['trainable']):,}"
    if params.get("total"):
        text += f" ({float(params['percent']):.3g}% of {int(params['total']):,})"
    return text


def _intro(facts: _Facts, info: dict, metrics: dict) -> list[str]:
    kind = f"**{facts.method}** adapter" + (f" ({facts.description})" if facts.description else "")
    base = (
        f"[{facts.base_hub}](https://huggingface.co/{facts.base_hub})"
        if facts.base_hub
        else f"`{_shown(facts.base)}`"
        if facts.base
        else "its base model"
    )
    text = f"A {kind} for {base}"
    text += f", trained with [peftlab]({PEFTLAB_URL})" if facts.by_peftlab else ", saved by `peft`"
    if info.get("dataset"):
        text += f" on {_dataset_phrase(str(info['dataset']))}"
    if metrics.get("steps"):
        text += f" for {int(metrics['steps']):,} optimizer steps"
    text += "."
    params = _params_phrase(info.get("parameters") or {})
    if params:
        text += f" Trainable parameters: {params}."
    return [f"# {facts.title}", "", text, ""]


def _from_evaluation(result: dict | None) -> dict:
    """``peftlab.evaluate.evaluate``'s result as card metrics (``base`` is "before", ``adapted`` "after")."""
    if not result:
        return {}
    out = {}
    for side, suffix in (("adapted", ""), ("base", "_before")):
        for key, value in (result.get(side) or {}).items():
            if isinstance(value, (int, float)):
                out[key + suffix] = value
    return out


METRIC_ROWS = (
    ("eval_loss", "eval loss", 4),
    ("perplexity", "perplexity", 4),
    ("exact_match", "exact match", 0),
    ("accuracy", "accuracy", 0),
)


def _metrics(facts: _Facts, metrics: dict, evaluation: dict | None) -> list[str]:
    rows = []
    for key, label, digits in METRIC_ROWS:
        after, before = metrics.get(key), metrics.get(f"{key}_before")
        if (after is None and before is None) or (key == "perplexity" and facts.task == "SEQ_CLS"):
            continue  # a classifier's perplexity means nothing
        if digits == 0:  # a share: show it in percent
            cells = ["—" if v is None else f"{100 * float(v):.1f}%" for v in (before, after)]
        else:
            cells = [_fmt(before, digits), _fmt(after, digits)]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    if not rows:
        return []
    where = "the dataset's held-out rows"
    if evaluation and evaluation.get("rows"):
        where = f"{evaluation['rows']} held-out rows of `{_fmt(evaluation.get('dataset', 'the dataset'))}`"
    after = f" after {int(metrics['steps']):,} optimizer steps" if metrics.get("steps") else ""
    return [
        "## Metrics",
        "",
        f"Measured on {where}: the base model (before) and with the adapter{after}.",
        "",
        "| metric | before (base model) | after (adapter) |",
        "|---|---:|---:|",
        *rows,
        "",
    ]


def _curve_section(curve: list[tuple[int, float]], files: dict[str, bytes]) -> list[str]:
    if not curve:
        return []
    last_step, last_loss = curve[-1]
    lines = ["## Loss curve", ""]
    if LOSS_CURVE_FILE in files:
        lines += [f"![loss curve]({LOSS_CURVE_FILE})", ""]
    lines += [f"Training loss {_fmt(curve[0][1])} at step {curve[0][0]}, {_fmt(last_loss)} at step {last_step}.", ""]
    return lines


def _training(facts: _Facts, info: dict) -> list[str]:
    settings = dict(info.get("training") or {})
    rows = []
    if facts.base:
        rows.append(("base model", facts.base_hub or _shown(facts.base)))
    if info.get("dataset"):
        name = str(info["dataset"])
        settings["dataset"] = name if _is_hub_dataset(name) or not _looks_local(name) else Path(name).name
    keys = [k for k in TRAINING_ORDER if k in settings] + sorted(
        k for k in settings if k not in TRAINING_ORDER and k not in TRAINING_HIDDEN
    )
    rows += [(k.replace("_", " "), settings[k]) for k in keys]
    params = _params_phrase(info.get("parameters") or {})
    if params:
        rows.append(("trainable parameters", params))
    if len(rows) <= 1:
        return []
    return [
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {name} | {_fmt(value, 6)} |" for name, value in rows],
        "",
    ]


def _config(cfg: dict) -> list[str]:
    method_cfg = _clean({k: v for k, v in cfg.items() if k not in PEFT_BOILERPLATE and v is not None})
    if not method_cfg:
        return []
    return [
        "## Adapter configuration",
        "",
        "From `adapter_config.json`:",
        "",
        "```json",
        json.dumps(method_cfg, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]


def _usage(facts: _Facts, info: dict) -> list[str]:
    base = facts.base_hub or _shown(facts.base) or "BASE_MODEL"
    where = facts.repo or "path/to/adapter"  # a repo id, else the folder the user has
    fetched = f"snapshot_download({json.dumps(facts.repo)})" if facts.repo else json.dumps(where)
    cls = "AutoModelForSequenceClassification" if facts.task == "SEQ_CLS" else "AutoModelForCausalLM"
    labels = f", num_labels={facts.num_labels}" if facts.num_labels else ""
    lines = ["## How to use", ""]
    if facts.peft_type in _PEFT_TYPES:
        lines += [
            "With [`peft`](https://github.com/huggingface/peft):",
            "",
            "```python",
            "from peft import PeftModel",
            f"from transformers import AutoTokenizer, {cls}",
            "",
            f"base = {cls}.from_pretrained({json.dumps(base)}{labels})",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(base)})",
            f"model = PeftModel.from_pretrained(base, {json.dumps(where)})",
            "```",
            "",
        ]
    else:
        pip = " ".join(dict.fromkeys(["peftlab", facts.plugin or "peftlab"]))
        lines += [
            f"`peft` has no `{facts.peft_type}` method, so this adapter loads with peftlab and the plugin that "
            f"provides it: `pip install {pip}`.",
            "",
        ]
    cli_base = "" if base == DEFAULT_MODEL_ID else f" --base {base}"
    if facts.task == "SEQ_CLS":
        dataset = str(info.get("dataset") or "")
        dataset = dataset if dataset and not _looks_local(dataset) else "DATASET"
        cli = f"peftlab eval --adapter {where}{cli_base} --dataset {dataset}"
    else:
        cli = f'peftlab generate --adapter {where}{cli_base} --prompt "Your prompt here"'
    task = f', task="SEQ_CLS", num_labels={facts.num_labels or 2}' if facts.task == "SEQ_CLS" else ""
    plugin = f" {facts.plugin}" if facts.plugin and facts.plugin != "peftlab" else ""
    lines += [
        f"With [peftlab]({PEFTLAB_URL}) (`pip install peftlab{plugin}`):",
        "",
        "```bash",
        cli,
        "```",
        "",
        "```python",
        *(["from huggingface_hub import snapshot_download"] if facts.repo else []),
        "from peftlab import load_adapter",
        "from peftlab.models import load_model",
        "",
        f"model, tokenizer = load_model({json.dumps(base)}{task})",
        f"name = load_adapter(model, {fetched})",
    ]
    if facts.task != "SEQ_CLS":
        lines += [
            "",
            "from peftlab.generate import generate_text",
            'print(generate_text(model, tokenizer, "Your prompt here", adapter=name))',
        ]
    return [*lines, "```", ""]


def _versions(meta: dict) -> list[str]:
    if not meta.get("peftlab_version"):
        return []
    return [
        "## Framework versions",
        "",
        f"- peftlab {meta['peftlab_version']}" + (f" with the `{meta['plugin']}` plugin" if meta.get("plugin") else ""),
        "",
    ]


def loss_curve_png(curve: list[tuple[int, float]], metrics: dict | None = None) -> bytes | None:
    """The training loss by step as a small PNG (with the eval loss before and after as points when known);
    ``None`` when matplotlib is not installed. The bytes carry no timestamp or version, so they are reproducible."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    except ImportError:
        return None
    metrics = metrics or {}
    steps, losses = [s for s, _ in curve], [v for _, v in curve]
    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.subplots()
    many = len(curve) > 30
    ax.plot(
        steps,
        losses,
        color="#4c72b0",
        linewidth=1,
        alpha=0.45 if many else 1.0,
        marker=None if many else "o",
        markersize=3,
        label="training loss",
    )
    if many:  # a moving average reads better than the raw, noisy curve
        k = max(5, len(curve) // 20)
        smooth = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))
        ]
        ax.plot(steps, smooth, color="#4c72b0", linewidth=2, label=f"moving average ({k} steps)")
    evals = [
        (s, v)
        for s, v in (
            (0, metrics.get("eval_loss_before")),
            (metrics.get("steps") or steps[-1], metrics.get("eval_loss")),
        )
        if v is not None
    ]
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "s", color="#dd8452", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


__all__ = ["Card", "build_card", "loss_curve_png", "LOSS_CURVE_FILE"]


def recipe_card(data: dict, *, repo_id: str | None = None, hub_url: str | None = None) -> str:
    """The README of a composition recipe (``composition.json``'s ``data``): what it stacks, each parent linked (a
    Hub parent at its pinned commit), the weights, and how to load it. ``hub_url`` is the Hub's address for links."""
    from .remote import endpoint

    url = (hub_url or endpoint()).rstrip("/")
    base = str(data.get("base_model") or "unknown")
    lines = ["---"]
    if _is_hub_id(base):
        lines.append(f"base_model: {json.dumps(base)}")
    lines += [
        "library_name: peftlab",
        f"pipeline_tag: {PIPELINE_TAGS.get(data.get('task_type') or 'CAUSAL_LM', 'text-generation')}",
        "tags:",
        '- "peftlab"',
        '- "peftlab-composition"',
        "---",
        "",
        f"# {_scrub(str(data.get('name') or repo_id or 'composition'))}: a stack of {len(data['parents'])} adapters",
        "",
        f"A [peftlab]({PEFTLAB_URL}) composition recipe for `{_shown(base)}`: the adapters below act together "
        "(a stack), each with its weight. The recipe holds no tensors, only the parents, pinned: loading it checks "
        "each parent's weights against the sha256 recorded here and refuses a changed one.",
        "",
        "| # | parent | method | weight | weights sha256 |",
        "|---|---|---|---|---|",
    ]
    for i, (p, w) in enumerate(zip(data["parents"], data["weights"], strict=True), 1):
        if p.get("repo_id") and p.get("sha"):
            shown = f"[{p['repo_id']}@{p['sha'][:12]}]({url}/{p['repo_id']}/tree/{p['sha']})"
        else:
            shown = f"`{_scrub(str(p.get('ref')))}` (local)"
        lines.append(f"| {i} | {shown} | {p['method']} | {w:g} | `{p['weights_sha256'][:16]}…` |")
    evaluation = data.get("evaluation")  # `peftlab eval --adapter RECIPE --record` keeps its result there
    metrics = _metrics(
        SimpleNamespace(task=data.get("task_type") or "CAUSAL_LM"), _from_evaluation(evaluation), evaluation
    )
    where = repo_id or "RECIPE_FOLDER"
    lines += [
        "",
        *metrics,
        "## Use",
        "",
        "```bash",
        f"peftlab generate --adapter {where} --prompt 'Hello'",
        f"peftlab pull {where}  # the recipe and its parents" if repo_id else "",
        "```",
        "",
        "```python",
        "import peftlab",
        "from peftlab.models import load_model",
        f"model, tok = load_model({base!r})",
        f"name = peftlab.load_adapter(model, {where!r})  # every parent, weighted; "
        "set_active(model, name) / None switches",
        "```",
        "",
    ]
    return _scrub("\n".join(line for line in lines if line is not None))  # metrics carry user text too

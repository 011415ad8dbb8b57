"""``peftlab`` command line: methods, train, eval, generate, chat, merge, nearest-tokens, compare.

Method config flags are generated from the method's config dataclass: ``peftlab train --method lora --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .errors import PeftlabError
from .plugins import get_method, methods


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, str):
        print(obj)
    else:
        for k, v in obj.items():
            print(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")


def cmd_methods(args: argparse.Namespace) -> int:
    from .plugins import registry

    items = [m.to_json() for m in methods()]
    if args.json:
        _print(items, True)
        return 0
    for m in items:
        caps = [k for k, v in m["capabilities"].items() if v is True]
        print(f"{m['name']:<16} {m['description']}  [{', '.join(caps)}]  ({m['plugin']})")
    for dist, why in registry().broken.items():
        print(f"(plugin {dist} failed to load: {why})", file=sys.stderr)
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from .train import TrainArgs

    for f in dataclasses.fields(TrainArgs):
        if f.name in ("method", "method_config"):
            continue
        kw: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.type in ("bool", bool):
            kw["action"] = "store_true"
        else:
            kw["default"] = argparse.SUPPRESS
        flags = [_flag(f.name)] + (["--output"] if f.name == "output_dir" else [])
        p.add_argument(*flags, **kw)


def _add_method_flags(p: argparse.ArgumentParser, method: str, taken: set[str]) -> list[str]:
    """One flag per config field (``--lora-alpha``); a clash with a trainer flag gets the method prefix."""
    names = []
    group = p.add_argument_group(f"{method} options")
    for spec in get_method(method).config_class.fields():
        flag = _flag(spec.name) if spec.name not in taken else _flag(f"{method}_{spec.name}")
        default = ",".join(spec.default) if isinstance(spec.default, list) else spec.default
        help_ = f"{spec.help} (default: {default})"
        if spec.choices:
            help_ += f" choices: {', '.join(map(str, spec.choices))}"
        group.add_argument(flag, dest=f"m__{spec.name}", default=None, metavar=spec.kind.upper(), help=help_)
        names.append(spec.name)
    return names


def _method_config(args: argparse.Namespace, method: str) -> dict[str, Any]:
    cls = get_method(method).config_class
    given = {k[3:]: v for k, v in vars(args).items() if k.startswith("m__") and v is not None}
    return dataclasses.asdict(cls.from_strings(given)) if given else {}


def cmd_train(args: argparse.Namespace) -> int:
    from .train import StopFlag, TrainArgs, install_signal_handlers, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields and k != "method"}
    for f in dataclasses.fields(TrainArgs):  # flags arrive as text: coerce to the field's type
        if f.name in kwargs and isinstance(kwargs[f.name], str) and f.type not in ("str", "str | None"):
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            kwargs[f.name] = kind(kwargs[f.name])
    targs = TrainArgs(method=args.method, method_config=_method_config(args, args.method), **kwargs)
    stop = StopFlag()
    install_signal_handlers(stop)

    def show(e: dict) -> None:
        if args.json:
            print(json.dumps(e, default=str), flush=True)
        elif e["event"] == "start":
            print(f"training {e['method']} on {e['train_rows']} rows for {e['steps']} steps; trainable "
                  f"{e['trainable']:,} of {e['total']:,} parameters ({e['percent']:.3f}%)", flush=True)
        elif e["event"] == "step":
            print(f"step {e['step']:>5}  loss {e['loss']:.4f}  lr {e['lr']:.2e}  {e['tokens_per_s']:.0f} tok/s  "
                  f"eta {e['eta_s']:.0f}s", flush=True)
        elif e["event"] == "eval":
            print(f"eval  step {e['step']:>5}  loss {e['eval_loss']:.4f}  ppl {e['perplexity']:.2f}", flush=True)
        elif e["event"] in ("done", "stopped"):
            print(f"{e['event']} at step {e['step']}; adapter saved to {e['adapter']}", flush=True)
        elif e["event"] == "status":
            print(e["message"], flush=True)

    train(targs, on_event=show, stop=stop)
    return 0


def _load(args: argparse.Namespace):
    from .io import load_adapter, read_adapter
    from .models import load_model

    method = None
    task = "CAUSAL_LM"
    if getattr(args, "adapter", None):
        files = read_adapter(args.adapter)
        method, task = files.method, files.peft_config.get("task_type") or "CAUSAL_LM"
    kw = {}
    if task == "SEQ_CLS":
        heads = files.meta.get("base_fingerprint", {})
        kw["num_labels"] = heads.get("num_labels") or 2
    model, tok = load_model(args.base, task=task, dtype=args.dtype, device=args.device,
                            method=method if method and method.capabilities.needs_quantized_base else None, **kw)
    name = load_adapter(model, args.adapter) if getattr(args, "adapter", None) else None
    return model, tok, name


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate_text

    model, tok, name = _load(args)
    reply = generate_text(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, raw=args.raw,
                          adapter=name if name else None)
    _print({"reply": reply, "adapter": args.adapter} if args.json else reply, args.json)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .generate import stream_side_by_side

    model, tok, name = _load(args)
    rows = [name, None] if name else [None]
    history: list[dict] = []
    print("chat: empty line or Ctrl-D quits" + ("; replies: adapted | base" if name else ""), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        history.append({"role": "user", "content": line})
        texts = [""] * len(rows)
        for partial in stream_side_by_side(model, tok, history, rows, max_new_tokens=args.max_new_tokens):
            texts = partial
        for label, text in zip(["adapted", "base"] if name else ["base"], texts):
            print(f"[{label}] {text}", flush=True)
        history.append({"role": "assistant", "content": texts[0]})
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    model, tok, name = _load(args)
    result = evaluate(model, tok, args.dataset, adapter=name, compare_base=not args.no_base,
                      max_samples=args.max_samples, max_new_tokens=args.max_new_tokens)
    _print(result, args.json)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .adapters import merge_and_unload

    model, tok, name = _load(args)
    merge_and_unload(model, name)
    out = Path(args.output)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _print({"merged_model": str(out), "adapter": args.adapter}, args.json)
    return 0


def cmd_nearest_tokens(args: argparse.Namespace) -> int:
    from .inspect import nearest_tokens

    model, tok, name = _load(args)
    rows = nearest_tokens(model, tok, name, top_k=args.top_k)
    if args.json:
        _print(rows, True)
    else:
        for i, row in enumerate(rows):
            print(f"virtual token {i:>3}: " + "  ".join(f"{t!r} ({s:.3f})" for t, s in row))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import run_from_args

    return run_from_args(args, as_json=args.json)


def _common(p: argparse.ArgumentParser, adapter: bool = True, required: bool = False) -> None:
    if adapter:
        p.add_argument("--adapter", required=required, help="adapter folder (PEFT format)")
    p.add_argument("--base", default=None, help="base model: Hub id, folder, or empty for SmolLM2 (offline)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab",
                                     description="Parameter-efficient fine-tuning; every method a plugin.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list installed methods and their config fields")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("train", help="train an adapter", description="Train an adapter. Method flags appear "
                       "with --method: `peftlab train --method lora --help`.")
    p.add_argument("--method", default="lora", help="PEFT method (see `peftlab methods`)")
    p.add_argument("--json", action="store_true", help="progress as JSON lines")
    _add_train_flags(p)
    method = _peek_method(argv)
    taken = {f.dest for f in p._actions}
    try:
        _add_method_flags(p, method, taken)
    except PeftlabError:
        pass  # unknown method: reported when the command runs
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("generate", help="greedy reply from the base model or an adapter")
    _common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("chat", help="chat on stdin; with --adapter, adapted and base replies side by side")
    _common(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("eval", help="eval loss, perplexity and exact match / accuracy, base vs adapted")
    _common(p)
    p.add_argument("--dataset", required=True, help="built-in name or data file/folder")
    p.add_argument("--max-samples", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("merge", help="merge an adapter into the base weights and save the full model")
    _common(p, required=True)
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("nearest-tokens", help="vocabulary tokens nearest each learned virtual token")
    _common(p, required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(fn=cmd_nearest_tokens)

    from .compare import add_arguments as compare_arguments

    p = sub.add_parser("compare", help="every method on the same task and budget: params, memory, speed, loss",
                       description="Train each method (default: all installed) on the same dataset for the same "
                       "number of steps, each in its own process, and print one table row per method.")
    compare_arguments(p)
    p.add_argument("--json", action="store_true", help="rows as JSON instead of the markdown table")
    p.set_defaults(fn=cmd_compare)
    return parser


def _peek_method(argv: list[str] | None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return "lora"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (PeftlabError, ValueError, KeyError, FileNotFoundError) as e:
        print(f"peftlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

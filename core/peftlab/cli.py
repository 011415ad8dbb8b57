"""``peftlab`` command line: methods, train, eval, generate, chat, merge, nearest-tokens, compare.

The trainer's flags and the method config flags are generated from their dataclasses (``peftlab.schema``):
``peftlab train --method lora --help``. Every flag arrives as text and is parsed by its field's type.
``methods``, ``--help`` and argument errors read those fields from the catalog (``peftlab.catalog``), so they load
neither the plugins nor torch; a command that runs parses its arguments again with the plugins' own classes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PeftlabError
from .schema import FieldSpec, fields_of  # torch, transformers and the plugins load only where a command needs them

if TYPE_CHECKING:
    from .train import TrainArgs

TRAINER, METHOD = "t__", "m__"  # dest prefixes of the trainer's flags and the method config's


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
            or action.required
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _default_text(value: Any) -> str:
    """A default as one would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _field_help(spec: FieldSpec) -> str:
    text = spec.help  # choices are in the metavar: --bias {none,all,lora_only}
    if "default" not in spec.help.lower():
        text += f" (default: {_default_text(spec.default)})"
    return text.strip().replace("%", "%%")  # argparse %-formats help texts


def _add_field(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    spec: FieldSpec,
    dest: str,
    flag: str | None = None,
    default: Any = argparse.SUPPRESS,
) -> None:
    """One flag for one schema field, as text (``FieldSpec.parse`` reads it); a bool flag alone means true.
    The field's other spellings (``--base-model`` for ``--base``) are accepted but not listed."""
    kw: dict[str, Any] = {"dest": dest, "default": default, "metavar": spec.kind.upper()}
    if spec.kind == "bool":
        kw.update(nargs="?", const="true", metavar="BOOL")
    elif spec.choices:
        kw["metavar"] = "{" + ",".join(map(str, spec.choices)) + "}"
    p.add_argument(flag or spec.option_string, help=_field_help(spec), **kw)
    for alias in spec.aliases if flag is None else []:
        p.add_argument(alias, help=argparse.SUPPRESS, **kw)


def _trainer_specs() -> dict[str, FieldSpec]:
    from .train import TrainArgs

    return {s.name: s for s in fields_of(TrainArgs)}


class _Fields:
    """Where the parsers read the trainer's and a method's fields: ``TrainArgs`` and the plugins themselves, or with
    ``catalog=True`` the catalog, which imports neither (``read`` then says whether a parser used it)."""

    def __init__(self, catalog: bool = False) -> None:
        self.catalog = catalog
        self.read = False
        self._loaded: Any = None

    def _catalog(self) -> Any:
        if self.catalog and self._loaded is None:
            from .catalog import load

            try:
                self._loaded = load()
            except PeftlabError:  # two plugins claim a method: the plugins themselves report it
                self.catalog = False
        self.read = self.read or self.catalog
        return self._loaded if self.catalog else None

    def trainer(self) -> dict[str, FieldSpec]:
        catalog = self._catalog()
        return {s.name: s for s in catalog.trainer_specs()} if catalog else _trainer_specs()

    def method(self, name: str) -> list[FieldSpec] | None:
        """The config fields of method ``name``; ``None`` when it is not installed (reported when the command runs)."""
        catalog = self._catalog()
        if catalog:
            return catalog.method_specs(name)
        from .plugins import get_method

        try:
            return get_method(name).config_class.fields()
        except PeftlabError:
            return None


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, str):
        print(obj)
    else:
        for k, v in obj.items():
            print(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")


def _progress(command: str, stream: Any) -> Callable[[str, int, int], None]:
    """``progress(stage, done, total)`` for a long command: ``eval: exact match 32/100 rows (4.1 rows/s)`` on
    ``stream``; on a terminal one line rewritten in place, else a line per update."""
    tty = hasattr(stream, "isatty") and stream.isatty()
    started: dict[str, float] = {}

    def show(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start = started.setdefault(stage, now)
        rate = f" ({done / (now - start):.3g} rows/s)" if done and now > start and stage == "exact match" else ""
        unit = " rows" if stage == "exact match" else ""
        text = f"{command}: {stage} {done}/{total}{unit}{rate}"
        if tty:
            print("\r" + text + "\033[K", end="\n" if done >= total else "", file=stream, flush=True)
        else:
            print(text, file=stream, flush=True)

    return show


def cmd_methods(args: argparse.Namespace) -> int:
    from .catalog import load

    catalog = load()  # the cached declarations, or the plugins loaded (and cached) when they changed
    if args.json:
        _print(catalog.methods, True)
        return 0
    for m in catalog.methods:
        caps = [k for k, v in m["capabilities"].items() if v is True]
        print(f"{m['name']:<16} {m['description']}  [{', '.join(caps)}]  ({m['plugin']})")
    for dist, why in catalog.broken.items():
        print(f"(plugin {dist} failed to load: {why})", file=sys.stderr)
    return 0


def _add_train_flags(p: argparse.ArgumentParser, fields: _Fields) -> None:
    for spec in fields.trainer().values():
        if spec.name != "method_config":  # the method's own flags stand for it
            _add_field(p, spec, TRAINER + spec.name)


def _add_method_flags(p: argparse.ArgumentParser, method: str, fields: _Fields) -> list[str]:
    """One flag per config field (``--lora-alpha``); a clash with a trainer flag gets the method prefix.
    No flags for a method that is not installed (the command reports it when it runs)."""
    names = []
    specs = fields.method(method)
    if specs is None:
        return names
    group = p.add_argument_group(f"{method} options")
    for spec in specs:
        clash = any(f in p._option_string_actions for f in [spec.option_string, *spec.aliases])
        _add_field(group, spec, METHOD + spec.name, flag=_flag(f"{method}_{spec.name}") if clash else None)
        names.append(spec.name)
    return names


def train_args(args: argparse.Namespace) -> TrainArgs:
    """The ``TrainArgs`` that parsed ``peftlab train`` flags describe (validated; nothing is loaded)."""
    from .train import TrainArgs

    given = vars(args)
    return TrainArgs.from_strings(
        {k[len(TRAINER) :]: v for k, v in given.items() if k.startswith(TRAINER)},
        {k[len(METHOD) :]: v for k, v in given.items() if k.startswith(METHOD)},
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .train import StopFlag, install_signal_handlers, train

    targs = train_args(args)
    stop = StopFlag()
    install_signal_handlers(stop)

    def show(e: dict) -> None:
        if args.json:
            print(json.dumps(e, default=str), flush=True)
        elif e["event"] == "start":
            print(
                f"training {e['method']} on {e['train_rows']} rows for {e['steps']} steps; trainable "
                f"{e['trainable']:,} of {e['total']:,} parameters ({e['percent']:.3f}%)",
                flush=True,
            )
        elif e["event"] == "step":
            print(
                f"step {e['step']:>5}  loss {e['loss']:.4f}  lr {e['lr']:.2e}  {e['tokens_per_s']:.0f} tok/s  "
                f"eta {e['eta_s']:.0f}s",
                flush=True,
            )
        elif e["event"] == "eval":
            print(f"eval  step {e['step']:>5}  loss {e['eval_loss']:.4f}  ppl {e['perplexity']:.2f}", flush=True)
        elif e["event"] in ("done", "stopped"):
            print(f"{e['event']} at step {e['step']}; adapter saved to {e['adapter']}", flush=True)
        elif e["event"] == "status":
            print(e["message"], flush=True)

    train(targs, on_event=show, stop=stop)
    return 0


def _hub():
    """``peftlab_hub`` (the Hub, the local store), or ``None`` when that distribution is not installed."""
    try:
        import peftlab_hub
    except ImportError:
        return None
    return peftlab_hub


def _adapter_folder(args: argparse.Namespace) -> str:
    """``--adapter`` as a folder: a folder as is; a store name or a Hub id (owner/name[@rev]) through peftlab-hub,
    which checks it and says where it came from (the commit sha of a Hub adapter) on stderr."""
    hub = _hub()
    if hub is None:
        return args.adapter
    resolved = hub.resolve_adapter(args.adapter, base=args.base, token=getattr(args, "token", None))
    if resolved.source != "folder" or resolved.provenance:
        print(f"adapter: {resolved.describe()}", file=sys.stderr, flush=True)
    return str(resolved.path)


def _load(args: argparse.Namespace):
    from .io import load_adapter, read_adapter
    from .models import load_model

    kw = {}
    if getattr(args, "adapter", None):
        args.adapter = _adapter_folder(args)
        from .recipe import is_recipe, representative  # a recipe: the parent whose base model it needs

        files = representative(args.adapter) if is_recipe(args.adapter) else read_adapter(args.adapter)
        kw = files.base_options()
    model, tok = load_model(args.base, dtype=args.dtype, device=args.device, **kw)
    name = load_adapter(model, args.adapter) if getattr(args, "adapter", None) else None
    return model, tok, name


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate_text

    model, tok, name = _load(args)
    reply = generate_text(
        model, tok, args.prompt, max_new_tokens=args.max_new_tokens, raw=args.raw, adapter=name if name else None
    )
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

    if args.record and not args.adapter:
        raise PeftlabError("--record keeps the result in an adapter folder: pass --adapter")
    if args.batch_size < 1:
        raise PeftlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, tok, name = _load(args)
    result = evaluate(
        model,
        tok,
        args.dataset,
        adapter=name,
        compare_base=not args.no_base,
        max_samples=args.max_samples,
        max_new_tokens=args.max_new_tokens,
        generate_batch_size=args.batch_size,
        progress=_progress("eval", sys.stderr),
    )
    if args.record:
        from .io import record_evaluation

        record_evaluation(args.adapter, result)
    _print(result, args.json)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .adapters import merge_and_unload
    from .io import atomic_dir, check_output_dir

    check_output_dir(args.output)  # before the model loads
    model, tok, name = _load(args)
    merge_and_unload(model, name)
    out = Path(args.output)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    atomic_dir(out, write)  # all or nothing, with the usual file modes
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


def _common(p: argparse.ArgumentParser, fields: _Fields, adapter: bool = True, required: bool = False) -> None:
    if adapter:
        p.add_argument(
            "--adapter",
            required=required,
            help="adapter: a folder (PEFT format), a local store name, or a Hub id owner/name[@revision]"
            + ("" if required else " (default: none, the base model)"),
        )
        p.add_argument(
            "--token",
            default=None,
            help="Hugging Face token for a private Hub adapter (default: "
            "HF_TOKEN, then the token `hf auth login` saved)",
        )
    specs = fields.trainer()  # the same names, help and defaults as on `peftlab train`
    for name, dest in (("base_model", "base"), ("dtype", "dtype"), ("device", "device")):
        _add_field(p, specs[name], dest, default=specs[name].default)
    p.add_argument("--json", action="store_true", help="machine-readable output")


class _Subcommands(dict):
    """The ``peftlab`` subcommands' parsers by name. A parser gets its arguments on first use (``setup``):
    ``peftlab --help``, an unknown command or ``peftlab methods`` never build the trainer's flags, so they load
    neither torch nor the plugins."""

    def __init__(self) -> None:
        super().__init__()
        self.setup: dict[int, list[Callable[[argparse.ArgumentParser], None]]] = {}

    def _ready(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for setup in self.setup.pop(id(parser), []):
            setup(parser)
        return parser

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        return self._ready(super().__getitem__(name))

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def values(self) -> list[argparse.ArgumentParser]:  # type: ignore[override]
        return [self[name] for name in self]

    def items(self) -> list[tuple[str, argparse.ArgumentParser]]:  # type: ignore[override]
        return [(name, self[name]) for name in self]


class _SubcommandsAction(argparse._SubParsersAction):
    """``add_subparsers`` whose ``add_parser(..., setup=fn)`` defers ``fn(parser)`` until the command is used
    (parsed, or its parser looked up); ``parser.defer(fn)`` defers more (the hub's commands use it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _Subcommands()

    def add_parser(self, name: str, setup: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any):
        parser = super().add_parser(name, **kwargs)
        pending = self._name_parser_map.setup.setdefault(id(parser), [])
        parser.defer = pending.append  # type: ignore[attr-defined]
        if setup is not None:
            pending.append(setup)
        return parser


def build_parser(argv: list[str] | None = None, fields: _Fields | None = None) -> argparse.ArgumentParser:
    """The ``peftlab`` parser. Each command's arguments are added when that command is used (``_Subcommands``):
    ``argv`` only tells which method's flags ``train`` shows. Fields come from ``TrainArgs`` and the plugins
    themselves unless ``fields`` says otherwise (``main`` reads the catalog first)."""
    fields = fields or _Fields()
    parser = argparse.ArgumentParser(
        prog="peftlab",
        formatter_class=_HelpFormatter,
        description="Parameter-efficient fine-tuning; every method a plugin.",
    )
    parser.register("action", "parsers", _SubcommandsAction)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)  # defaults in every --help
    method = _peek_method(argv)

    def methods_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    add("methods", help="list installed methods and their config fields", setup=methods_args).set_defaults(
        fn=cmd_methods
    )

    def train_setup(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="progress as JSON lines")
        _add_train_flags(p, fields)
        _add_method_flags(p, method, fields)

    add(
        "train",
        help="train an adapter",
        description="Train an adapter. Method flags appear with --method: `peftlab train --method lora --help`.",
        setup=train_setup,
    ).set_defaults(fn=cmd_train)

    def generate_args(p: argparse.ArgumentParser) -> None:
        _common(p, fields)
        p.add_argument("--prompt", required=True, help="the user message (with --raw: the text to continue)")
        p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
        p.add_argument("--raw", action="store_true", help="feed the prompt as is, without the chat template")

    add("generate", help="greedy reply from the base model or an adapter", setup=generate_args).set_defaults(
        fn=cmd_generate
    )

    def chat_args(p: argparse.ArgumentParser) -> None:
        _common(p, fields)
        p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per reply at most")

    add(
        "chat", help="chat on stdin; with --adapter, adapted and base replies side by side", setup=chat_args
    ).set_defaults(fn=cmd_chat)

    def eval_args(p: argparse.ArgumentParser) -> None:
        _common(p, fields)
        p.add_argument("--dataset", required=True, help="built-in name or data file/folder")
        p.add_argument("--max-samples", type=int, default=64, help="rows evaluated at most")
        p.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per row for exact match")
        p.add_argument(
            "--batch-size",
            type=int,
            default=16,
            help="rows generated together for exact match (1: row by row, one model at a time)",
        )
        p.add_argument("--no-base", action="store_true", help="skip the base model")
        p.add_argument(
            "--record", action="store_true", help="keep the result in the adapter folder (its model card shows it)"
        )

    add("eval", help="eval loss, perplexity and exact match / accuracy, base vs adapted", setup=eval_args).set_defaults(
        fn=cmd_eval
    )

    def merge_args(p: argparse.ArgumentParser) -> None:
        _common(p, fields, required=True)
        p.add_argument("--output", required=True, help="folder for the merged model")

    add("merge", help="merge an adapter into the base weights and save the full model", setup=merge_args).set_defaults(
        fn=cmd_merge
    )

    def nearest_args(p: argparse.ArgumentParser) -> None:
        _common(p, fields, required=True)
        p.add_argument("--top-k", type=int, default=5, help="tokens listed per virtual token")

    add("nearest-tokens", help="vocabulary tokens nearest each learned virtual token", setup=nearest_args).set_defaults(
        fn=cmd_nearest_tokens
    )

    def compare_args(p: argparse.ArgumentParser) -> None:
        from .compare import add_arguments

        add_arguments(p)
        p.add_argument("--json", action="store_true", help="rows as JSON instead of the markdown table")

    add(
        "compare",
        help="every method on the same task and budget: params, memory, speed, loss",
        description="Train each method (default: all installed) on the same dataset for the same "
        "number of steps, each in its own process, and print one table row per method.",
        setup=compare_args,
    ).set_defaults(fn=cmd_compare)

    hub = _hub()
    if hub is not None:  # push, pull, search, doctor, store: the hub distribution's commands
        hub.add_commands(add)
    return parser


STALE_SIGNS = ("unrecognized arguments", "invalid choice")  # argparse errors a stale catalog can cause


def _peek_method(argv: list[str] | None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--method="):
            return a.split("=", 1)[1]
    return "lora"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fields = _Fields(catalog=True)  # --help and argument errors answer from the catalog, without the plugins
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser(argv, fields).parse_args(argv)
        sys.stderr.write(err.getvalue())  # what the parse warned of, if anything
    except SystemExit as e:
        # a flag or a method the catalog does not know: a stale catalog (a plugin changed in a way its fingerprint
        # missed) would say so wrongly, so the plugins' own fields decide, and print their error if it is one
        if e.code == 0 or not fields.read or not any(s in err.getvalue() for s in STALE_SIGNS):
            sys.stderr.write(err.getvalue())
            raise
        args = build_parser(argv).parse_args(argv)
        from .catalog import forget

        forget()  # the plugins accepted what the catalog refused: it is stale
    if fields.read:  # the command runs: its arguments are read again by the plugins' and TrainArgs's own fields
        args = build_parser(argv).parse_args(argv)
    try:
        return args.fn(args)
    except (PeftlabError, ValueError, KeyError, OSError) as e:
        # a user's mistake (bad input, a missing or unwritable file): one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"peftlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``peftlab push | pull | search | doctor | store``: the hub's commands, added to core's CLI when this
distribution is installed (core's ``build_parser`` calls ``add_commands``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from peftlab.models import DEFAULT_MODEL_ID

TOKEN_HELP = "Hugging Face token (default: HF_TOKEN, then the token `hf auth login` saved); never stored or shown"


def _out(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text, flush=True)


def cmd_push(args: argparse.Namespace) -> int:
    import warnings

    from .push import push

    print(
        f"pushing {args.adapter_dir} to {args.repo_id}" + (f" ({args.revision})" if args.revision else ""),
        file=sys.stderr,
        flush=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        r = push(
            args.adapter_dir,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            message=args.message,
            token=args.token,
            license=args.license,
        )
    for w in caught:  # one plain line each (what push warns about), not Python's file:line form
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    _out(r.to_json(), args.json, f"{r.commit_url}\n{r.commit_sha}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .pull import pull

    r = pull(args.repo_id, revision=args.revision, output=args.output, name=args.name, base=args.base, token=args.token)
    if r.replaced:
        print(r.replaced, file=sys.stderr, flush=True)
    _out(r.to_json(), args.json, f"pulled {r.repo_id} at {r.sha} into {r.path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import search

    found = search(args.base, method=args.method, query=args.query, limit=args.limit, token=args.token)
    if args.json:
        _out([a.to_json() for a in found], True, "")
        return 0
    if not found:
        print(f"no adapters of {args.base} found" + (f" for method {args.method}" if args.method else ""))
        return 0
    print(f"{'repo':<48} {'method':<14} {'downloads':>9} {'likes':>5}  last change")
    for a in found:
        print(f"{a.repo_id:<48} {a.method or '?':<14} {a.downloads:>9} {a.likes:>5}  {(a.last_modified or '')[:10]}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose
    from .resolve import resolve_adapter

    try:
        folder = resolve_adapter(args.adapter, token=args.token, check=False).path  # the doctor reports, not raises
    except Exception:  # noqa: BLE001 - e.g. a folder that is no adapter: the report says what is wrong with it
        folder = args.adapter
    report = diagnose(folder, args.base, load_weights=args.load, token=args.token)
    _out(report.to_json(), args.json, report.format())
    return 0 if report.ok else 1


def cmd_store(args: argparse.Namespace) -> int:
    from .store import AdapterStore

    store = AdapterStore(args.store_dir)
    if args.store_command == "list":
        items = store.list()
        if args.json:
            _out([_info_json(i) for i in items], True, "")
        elif not items:
            print(f"the store ({store.root}) is empty: `peftlab store add FOLDER NAME` or `peftlab pull OWNER/NAME`")
        for i in items if not args.json else []:
            print(f"{i.name:<32} {i.method:<14} {i.base_model}")
    elif args.store_command == "add":
        info = store.add(args.folder, args.name, overwrite=args.overwrite)
        _out(_info_json(info), args.json, f"added {info.name} ({info.method}) to {store.root}")
    elif args.store_command == "rm":
        store.remove(args.name)
        _out({"removed": args.name}, args.json, f"removed {args.name}")
    else:
        info = store.info(args.name)
        _out(_info_json(info), args.json, "\n".join(f"{k}: {v}" for k, v in _info_json(info).items()))
    return 0


def cmd_compose(args: argparse.Namespace) -> int:
    if getattr(args, "sweep", None) or getattr(args, "learn", None):  # a weight sweep or learned weights instead
        from .compose import CompositionError
        from .learn import run_learn
        from .sweep import run_sweep

        if args.sweep and args.learn:
            raise CompositionError("--sweep and --learn are two different jobs: give one")
        return run_sweep(args) if args.sweep else run_learn(args)
    from .compose import compose

    if args.stack:
        return _stack(args)
    out = compose(
        args.parents,
        args.weights,
        args.combination,
        output=args.output,
        svd_rank=args.svd_rank,
        density=args.density,
        majority_sign=args.majority_sign,
        seed=args.seed,
        token=args.token,
    )
    meta = json.loads((out / "peftlab.json").read_text())
    cfg = json.loads((out / "adapter_config.json").read_text())
    summary = {"output": str(out), "method": meta["method"], "r": cfg.get("r"), **meta["composition"]}
    _out(
        summary,
        args.json,
        f"merged {len(args.parents)} adapter(s) by {args.combination} into {out} ({meta['method']}, r={cfg.get('r')})",
    )
    return 0


def _stack(args: argparse.Namespace) -> int:
    from .stack import stack

    out = stack(args.parents, args.weights, output=args.output, name=args.name, token=args.token)
    data = json.loads((out / "composition.json").read_text())
    _out(
        {"output": str(out), **data},
        args.json,
        f"stacked {len(args.parents)} adapter(s) into the recipe {out} (load it as --adapter {out})",
    )
    return 0


def _info_json(info) -> dict:
    from .pull import provenance

    return {
        "name": info.name,
        "path": str(info.path),
        "method": info.method,
        "peft_type": info.peft_type,
        "base_model": info.base_model,
        "task_type": info.task_type,
        "metrics": info.metrics,
        "provenance": provenance(info.path),
    }


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the hub's subcommands with ``add`` (``subparsers.add_parser`` with core's help formatter)."""
    p = add("push", help="push an adapter to the Hugging Face Hub (repo created when missing), with a model card")
    p.add_argument("adapter_dir", help="adapter folder (or a training run's folder)")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--revision", default=None, help="branch to push to, created when missing (default: main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--message", default=None, help="commit message (default: 'Upload <method> adapter with peftlab')")
    p.add_argument("--license", default=None, help="license for the card's header, e.g. apache-2.0 (default: none)")
    p.add_argument("--token", default=None, help=TOKEN_HELP)
    p.add_argument("--json", action="store_true", help="commit url and sha as JSON")
    p.set_defaults(fn=cmd_push)

    p = add("pull", help="download a Hub adapter, check it, and copy it into the local store (or --output)")
    p.add_argument("repo_id", help="owner/name, optionally owner/name@revision")
    p.add_argument("--revision", default=None, help="branch, tag or commit sha (default: the default branch)")
    p.add_argument("--output", default=None, help="folder to copy it to (default: the local store)")
    p.add_argument("--name", default=None, help="name in the local store (default: owner--name)")
    p.add_argument("--base", default=None, help="base model to check it against (default: the one it records)")
    p.add_argument("--token", default=None, help=TOKEN_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_pull)

    p = add("search", help="adapters of a base model on the Hub")
    p.add_argument("--base", default=DEFAULT_MODEL_ID, help="base model id")
    p.add_argument("--method", default=None, help="only this method: lora, prompt_tuning, ... (default: any)")
    p.add_argument("--query", default=None, help="only repos whose name contains this (default: any)")
    p.add_argument("--limit", type=int, default=20, help="adapters listed at most")
    p.add_argument("--token", default=None, help=TOKEN_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_search)

    p = add("doctor", help="check an adapter before loading it: files, method, base model, targets, shapes")
    p.add_argument("adapter", help="adapter folder, local store name, or Hub id owner/name[@revision]")
    p.add_argument("--base", default=None, help="base model to check against (default: the one it records)")
    p.add_argument("--load", action="store_true", help="also load the base weights and the adapter for real")
    p.add_argument("--token", default=None, help=TOKEN_HELP)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(fn=cmd_doctor)

    p = add(
        "compose",
        help="merge adapters (LoRA family) with weights into one plain PEFT adapter, or --stack them as a recipe",
    )
    p.add_argument("parents", nargs="+", help="adapter folders, local store names or Hub ids owner/name[@revision]")
    p.add_argument(
        "--stack",
        action="store_true",
        help="do not merge: write a composition recipe that loads every parent at once, each with its weight "
        "(any methods that can stack; a weight other than 1 needs one that can scale) (default: merge)",
    )
    p.add_argument("--name", default=None, help="--stack: the name the recipe loads under (default: the folder's)")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per parent (default: 1 each)")
    p.add_argument(
        "--combination",
        default="cat",
        help="how to merge, peft's add_weighted_adapter types: cat, svd, linear, ties, ties_svd, "
        "dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, magnitude_prune, "
        "magnitude_prune_svd (default: cat, the exact sum Σ wᵢΔWᵢ)",
    )
    p.add_argument("--output", required=True, help="folder to write the merged adapter to (no default: required)")
    p.add_argument(
        "--svd-rank", type=int, default=None, help="rank of the *_svd types' result (default: the largest parent rank)"
    )
    p.add_argument(
        "--density",
        type=float,
        default=None,
        help="share of entries kept by ties, dare_* and magnitude_prune* (default: none; those need it)",
    )
    p.add_argument(
        "--majority-sign",
        default="total",
        choices=("total", "frequency"),
        help="how ties elects each entry's sign (default: total)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of dare_*'s random masks (default: 0)")
    p.add_argument("--token", default=None, help=TOKEN_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output (default: off)")

    def sweep_and_learn_arguments(p: argparse.ArgumentParser) -> None:  # they import torch: only when used
        from .learn import add_learn_arguments
        from .sweep import add_sweep_arguments

        add_sweep_arguments(p)
        add_learn_arguments(p)

    getattr(p, "defer", lambda setup: setup(p))(sweep_and_learn_arguments)  # core's lazy parsers, else now
    p.set_defaults(fn=cmd_compose)

    p = add("store", help="the local adapter store (the offline hub): list, add, rm, show")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store-dir", default=None, help="store folder (default: PEFTLAB_STORE, else ~/.cache/peftlab/adapters)"
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    verbs = p.add_subparsers(dest="store_command", required=True)
    verbs.add_parser("list", parents=[common], help="adapters in the store")
    a = verbs.add_parser("add", parents=[common], help="copy an adapter folder into the store (checked first)")
    a.add_argument("folder")
    a.add_argument("name")
    a.add_argument("--overwrite", action="store_true", help="replace an adapter of that name")
    verbs.add_parser("rm", parents=[common], help="remove an adapter").add_argument("name")
    verbs.add_parser("show", parents=[common], help="an adapter's facts and where it came from").add_argument("name")
    p.set_defaults(fn=cmd_store)

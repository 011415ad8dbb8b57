"""Stacks of adapters saved as composition recipes (``peftlab compose --stack``): no tensors are merged; the recipe
names each parent, pinned (Hub commit, sha256 of its weights), with a weight where its method can scale, and
``peftlab.load_adapter`` loads them all at once (``peftlab.recipe``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import peftlab
from peftlab import MethodError
from peftlab.io import CARD_FILE, atomic_dir, check_output_dir, check_replaceable
from peftlab.recipe import COMBINATION, FORMAT_VERSION, RECIPE_FILE, check_stack, check_weights, is_recipe, pins

from .card import recipe_card
from .resolve import parent_inside, resolve_adapter
from .store import AdapterStore


class StackError(MethodError):
    """The parents cannot be stacked (another base, a method that cannot stack or be weighted...)."""


def stack(
    parents: list[str | os.PathLike],
    weights: list[float] | None = None,
    *,
    output: str | os.PathLike,
    name: str | None = None,
    store: AdapterStore | None = None,
    token: str | None = None,
) -> Path:
    """Write a recipe stacking ``parents`` (folders, local store names or Hub ids ``owner/name[@rev]``) with
    ``weights`` (default 1 each; a weight other than 1 needs a method that can scale) to the folder ``output``,
    atomically: ``composition.json`` and a README card. Returns the folder. ``name`` (default: the folder's name) is
    the name the recipe loads under."""
    if not parents:
        raise StackError("a stack needs at least one parent adapter")
    weights = check_weights([1.0] * len(parents) if weights is None else list(weights), len(parents))
    out = check_output_dir(output).resolve()
    check_replaceable(out, is_recipe, "composition recipe", "the recipe")  # before any parent is fetched
    resolved, files = [], []
    for p in parents:
        r = resolve_adapter(p, store=store, token=token)
        if is_recipe(r.path):
            raise StackError(f"{p} is itself a recipe: stack its parents instead")
        resolved.append(r)
        files.append(peftlab.read_adapter(r.path))
    inside = parent_inside(out, parents, resolved)
    if inside:
        raise StackError(inside)
    bases = {str(p): f.peft_config.get("base_model_name_or_path") for p, f in zip(parents, files, strict=True)}
    prints = [f.meta.get("base_fingerprint") or {} for f in files]
    clash = [
        k for fp in prints[1:] for k in set(fp) & set(prints[0]) if fp[k] != prints[0][k]
    ]  # facts recorded by both
    if len(set(bases.values())) > 1 or clash:
        listed = "; ".join(f"{a}: {b}" for a, b in bases.items())
        raise StackError(f"the parents were made for different base models ({listed}); a stack needs one base")
    tasks = {f.peft_config.get("task_type") or "CAUSAL_LM" for f in files}
    if len(tasks) > 1:
        raise StackError(f"the parents are for different tasks ({', '.join(sorted(tasks))})")
    try:
        check_stack(files, weights, [str(p) for p in parents])
    except MethodError as e:
        raise StackError(str(e)) from None
    records = []
    for arg, r, f in zip(parents, resolved, files, strict=True):
        rec = {
            "ref": str(arg),
            "source": r.source,
            "method": f.method.name,
            "adapter_name": f.meta.get("adapter_name") or "default",
            **pins(f.path),  # the sha256 of its weights, config and extra state: what loading it checks
        }
        if r.source == "folder":
            rec["path"] = os.path.relpath(Path(f.path).resolve(), out)  # relative to the recipe folder
        prov = r.provenance or {}
        if prov.get("repo_id") and prov.get("sha"):
            rec["repo_id"], rec["sha"] = prov["repo_id"], prov["sha"]
            if r.source == "hub":
                rec["ref"] = str(arg)
        records.append(rec)
    fingerprint = next((fp for fp in prints if fp), {})
    data = {
        "format_version": FORMAT_VERSION,
        "combination": COMBINATION,
        "name": name or out.name,
        "base_model": next(iter(bases.values())) or "unknown",
        "base_fingerprint": fingerprint,
        "task_type": tasks.pop(),
        "parents": records,
        "weights": weights,
        "peftlab_version": peftlab.__version__,
    }

    def write(tmp: Path) -> None:
        (tmp / RECIPE_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (tmp / CARD_FILE).write_text(recipe_card(data))

    return atomic_dir(check_replaceable(out, is_recipe, "composition recipe", "the recipe"), write)

"""Weight sweeps over two adapters (``peftlab compose --sweep DATASET``), and what sweeps and learned mixtures share:
one base model with the parents applied at any weights, and the score of such a mixture on rows.

The base model loads once. A mixture's weights are applied without reloading anything, one of two ways:

* **scale** — every parent is loaded as its own adapter, all active, and ``peftlab.adapters.set_weight`` sets each
  one's weight (methods that declare ``capabilities.scalable``; a weight may be a tensor that requires grad, which is
  how ``learn`` descends on the mixing scalars);
* **merge** — otherwise, the parents' exact ``cat`` merge (``Σ wᵢ ΔWᵢ``, their method's ``combine`` hook) is computed
  in memory and copied into one adapter slot, whose shape does not change with the weights.

Nothing here names a method: what a parent can do is its method's declaration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI builds its parser from this module: torch and the model code load when used
    import torch

    from .store import AdapterStore

SWEEP_JSON = "sweep.json"
SWEEP_PNG = "sweep.png"
DEFAULT_GRID = tuple(round(i / 10, 1) for i in range(11))
log = logging.getLogger(__name__)
MIX_SLOT = "mix"  # the adapter slot of merge mode
OBJECTIVES = ("row", "token", "worst", "match")  # what Mixture.loss (and the learners) can minimise


def check_objective(objective: str) -> None:
    from .compose import CompositionError

    if objective not in OBJECTIVES:
        raise CompositionError(f"objective {objective!r}: choose from {', '.join(OBJECTIVES)}")


def objective_loss(scores: dict[str, Any], objective: str) -> float:
    """The loss ``objective`` names, from ``Mixture.scores``' one pass over the rows (``match``: ``1 − exact match``
    plus the worst-token loss)."""
    check_objective(objective)
    if objective == "match":
        return 1.0 - scores["match"] + scores["worst"]
    return scores[objective]


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def check_weights(weights: Sequence[Any], n: int, what: str = "weights") -> list[float]:
    """``weights`` as floats, one per parent, each finite; else a ``CompositionError`` naming the problem."""
    from .compose import CompositionError

    out = []
    for w in weights:
        try:
            out.append(float(w))
        except (TypeError, ValueError):
            raise CompositionError(f"{what}: {w!r} is not a number") from None
    if len(out) != n:
        raise CompositionError(f"{what}: {len(out)} weight(s) for {n} parent(s): give one weight per parent")
    bad = [w for w in out if not math.isfinite(w)]
    if bad:
        raise CompositionError(f"{what}: {bad[0]} is not a finite number")
    return out


class Mixture:
    """A base model with ``parents`` (folders, store names, Hub ids) applied at weights set by :meth:`apply`.

    ``mode`` is ``"scale"`` when ``set_weight`` exists and every parent's method is scalable, else ``"merge"``
    (see the module's docstring); ``prefer`` forces one (``"merge"`` needs parents that combine by ``cat``)."""

    def __init__(
        self,
        parents: Sequence[str | os.PathLike],
        *,
        base: str | None = None,
        store: AdapterStore | None = None,
        token: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        prefer: str | None = None,
    ) -> None:
        import peftlab
        from peftlab.models import load_model

        from .compose import CompositionError, _common_base, _common_form
        from .resolve import resolve_adapter

        if not parents:
            raise CompositionError("a mixture needs at least one parent adapter")
        self.parents = [str(p) for p in parents]
        self.resolved = [resolve_adapter(p, store=store, token=token, base=base) for p in parents]
        self.files = [peftlab.read_adapter(r.path) for r in self.resolved]
        recorded, self.task = _common_base(self.parents, self.files)
        if self.task not in (None, "CAUSAL_LM"):
            raise CompositionError(f"mixtures are scored on causal LMs; the parents are {self.task} adapters")
        self.mode = self._pick_mode(prefer)
        quantized = [f.method for f in self.files if f.method.capabilities.needs_quantized_base]
        self.model, self.tokenizer = load_model(
            base or recorded, dtype=dtype, device=device, method=quantized[0] if quantized else None
        )
        self.names: list[str] = []
        self._combiner = self._inputs = None
        if self.mode == "scale":
            for i, r in enumerate(self.resolved):
                self.names.append(peftlab.load_adapter(self.model, r.path, f"parent{i}", activate=False))
        else:
            self._combiner, self._inputs = _common_form(self.parents, self.files)
            if "cat" not in self._combiner.capabilities.combinations:
                raise CompositionError(
                    f"{self._combiner.name} adapters neither scale nor merge exactly (cat), so they cannot be mixed"
                )
        peftlab.set_active(self.model, self.names)
        self._freeze()
        self.weights: list[float] | None = None

    def _freeze(self) -> None:
        """Nothing of the model trains: only mixing weights (tensors handed to ``apply``) may."""
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _pick_mode(self, prefer: str | None) -> str:
        from peftlab import adapters as core_adapters

        from .compose import CompositionError

        scalable = [f.method.capabilities.scalable for f in self.files]
        has_scale = hasattr(core_adapters, "set_weight")
        if prefer not in (None, "scale", "merge"):
            raise CompositionError(f"mode {prefer!r}: use scale or merge")
        if prefer == "scale" or (prefer is None and has_scale and all(scalable)):
            if not has_scale:
                raise CompositionError("this peftlab has no adapters.set_weight: mixing by scale needs a newer one")
            refused = [
                f"{a}: {f.method.name} cannot be weighted ({f.method.capabilities.scale_note or 'not scalable'})"
                for a, f, s in zip(self.parents, self.files, scalable, strict=True)
                if not s
            ]
            if refused:
                raise CompositionError("; ".join(refused))
            return "scale"
        for a, f in zip(self.parents, self.files, strict=True):
            if "cat" not in f.method.capabilities.combinations:
                why = f.method.capabilities.scale_note or f.method.capabilities.combine_note or "it declares neither"
                raise CompositionError(
                    f"{a}: {f.method.name} adapters can be neither weighted (scale) nor merged exactly (cat): {why}"
                )
        return "merge"

    def apply(self, weights: Sequence[float | torch.Tensor]) -> None:
        """Set the parents' weights. Tensors (which may require grad) are kept as they are in scale mode."""
        import torch

        import peftlab
        from peftlab import AdapterWeights, registry
        from peftlab import adapters as core_adapters

        from .compose import CompositionError

        if len(weights) != len(self.parents):
            raise CompositionError(f"{len(weights)} weight(s) for {len(self.parents)} parent(s)")
        if self.mode == "scale":
            for name, w in zip(self.names, weights, strict=True):
                core_adapters.set_weight(self.model, name, w)
        else:
            if any(torch.is_tensor(w) and w.requires_grad for w in weights):
                raise CompositionError("weights that require grad need scale mode (scalable parents)")
            floats = [float(w) for w in weights]
            cfg, tensors = self._combiner.hook("combine")(
                parents=self._inputs, weights=floats, combination="cat", options={}
            )
            if not self.names:
                cfg = {**cfg, "task_type": self.task or "CAUSAL_LM"}
                handle = registry().for_peft_type(cfg["peft_type"], cfg)
                config = handle.config_class.from_dict(cfg, source="the mixture")
                peftlab.add_adapter(self.model, handle, config, MIX_SLOT)
                self.names = [MIX_SLOT]
                peftlab.set_active(self.model, self.names)
                self._freeze()
            handle, e = core_adapters.entry(self.model, MIX_SLOT)
            handle.hook("load")(
                model=self.model, config=e.config, adapter_name=MIX_SLOT, weights=AdapterWeights(tensors)
            )
        self.weights = [float(w.detach()) if torch.is_tensor(w) else float(w) for w in weights]

    def encode(self, rows: list[dict], max_length: int = 256) -> list[dict]:
        """Encoded chat rows; each item also gets ``reply_span``: the positions ``[start, end)`` of the reply core's
        exact match grades (the last assistant turn, up to and including its end-of-turn token), or ``None`` when
        greedy decoding could not reproduce it (no reply, or cut by ``max_length`` before its end)."""
        from peftlab.data import DatasetError, encode_rows, prompt_and_reference
        from peftlab.evaluate import _forced_replies
        from peftlab.generate import _stop_ids, prompt_ids

        items = encode_rows(rows, self.tokenizer, max_length=max_length, task="CAUSAL_LM")
        pairs = list(zip(rows, items))
        if len(items) != len(rows):  # a row was dropped (no reply token within max_length): line the rest up
            pairs = []
            quiet = logging.getLogger("peftlab.data")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # the call above already said what it cut and dropped
            try:
                for row in rows:
                    with contextlib.suppress(DatasetError):  # this row is the one dropped
                        pairs += [(row, item) for item in encode_rows([row], self.tokenizer, max_length=max_length)]
            finally:
                quiet.setLevel(level)
        stops = _stop_ids(self.tokenizer)
        for row, item in pairs:
            pair = prompt_and_reference(row)
            seq = prompt_ids(self.tokenizer, pair[0]) if pair else None
            reply = _forced_replies([item], [seq], stops).get(0) if seq else None
            item["reply_span"] = (len(seq), len(seq) + len(reply)) if reply else None
        if pairs and not any(item["reply_span"] for _, item in pairs):
            log.warning(
                "no row's reply can be graded for exact match (none ends in an end-of-turn token within max_length, "
                "or the rows have no reply): the match objective's exact match is 0 for every mixture"
            )
        return [item for _, item in pairs]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def loss(self, items: list[dict], batch_size: int = 8, objective: str = "token") -> float:
        """The eval loss of the current mixture on encoded ``items``: ``objective="token"`` is core's token-weighted
        eval loss (long replies count more); ``"row"`` is the mean over rows of each row's own mean token loss
        (every row counts the same, whatever its length: task-balanced); ``"worst"`` is the mean over rows of each
        row's worst (highest-loss) reply token; ``"match"`` is ``1 − exact match`` plus ``"worst"``
        (``objective_loss``)."""
        from peftlab.train import eval_loss

        if objective == "token":
            return eval_loss(self.model, items, self.pad_id, batch_size)
        check_objective(objective)
        return objective_loss(self.scores(items, batch_size), objective)

    def scores(self, items: list[dict], batch_size: int = 8) -> dict[str, Any]:
        """Everything one pass over encoded ``items`` tells about the current mixture (no gradients, no
        generation): ``token`` (core's token-weighted eval loss), ``row`` (mean of the rows' own mean token losses),
        ``worst`` (mean of the rows' worst-token losses), ``match`` (the share of rows whose whole reply is the
        model's top choice token after token: greedy exact match, see :meth:`row_stats`) and the per-row
        ``row_losses``, ``worst_losses`` and ``hits``, in the order of ``items``."""
        import torch

        from peftlab.data import collate

        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        losses: list[float] = []
        worst: list[float] = []
        hits: list[bool] = []
        total = count = 0.0
        try:
            with torch.no_grad():
                for i in range(0, len(items), batch_size):
                    chunk = items[i : i + batch_size]
                    batch = {k: v.to(device) for k, v in collate(chunk, self.pad_id).items()}
                    stats = self.row_stats(batch, reply=_reply_mask(chunk, batch["labels"].shape[1]))
                    n = stats["tokens"]
                    total += float((stats["row"] * n).sum())
                    count += float(n.sum())
                    losses += [float(x) for x in stats["row"]]
                    worst += [float(x) for x in stats["worst"]]
                    hits += [bool(x) for x in stats["hit"]]
        finally:
            self.model.train(was_training)
        rows = max(len(items), 1)
        return {
            "token": total / max(count, 1),
            "row": sum(losses) / rows,
            "worst": sum(worst) / rows,
            "match": sum(hits) / rows,
            "row_losses": losses,
            "worst_losses": worst,
            "hits": hits,
        }

    def row_stats(self, batch: dict, reply=None) -> dict:
        """Per row of a collated causal-LM ``batch`` (labels shifted by one as the model shifts them, ``-100``
        ignored), from one forward pass: ``row`` — the row's own mean token loss (``[B]``, differentiable);
        ``worst`` — its worst (highest) token loss (``[B]``, differentiable); ``tokens`` — its count of loss tokens;
        ``hit`` — whether the model's top choice is the reply's token at every reply position (``[B]`` bool).

        ``hit`` is greedy decoding's exact match, without generating: greedy decoding picks the top token at each
        step, so it reproduces the reply token for token exactly when every step's top choice, given the reply so
        far, is the reply's own token — and the labelled reply ends with the end-of-turn marker, so it stops there
        too. A row without loss tokens scores 0 loss and no hit. ``reply`` (``[B, T-1]`` bool over the shifted
        targets, see ``_reply_mask``) limits ``hit`` to the reply exact match grades: the last assistant turn of a
        multi-turn row, and no hit for a reply cut before its end-of-turn token; without it, every labelled
        position."""
        import torch.nn.functional as F

        labels = batch["labels"]
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        target = labels[:, 1:]
        tok = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # [B, T-1]
        mask = target != -100
        count = mask.sum(1)
        top = logits.detach().argmax(-1)
        graded = mask if reply is None else reply.to(mask.device) & mask
        hit = ((top == target) | ~graded).all(1) & graded.any(1)
        return {
            "row": tok.sum(1) / count.clamp(min=1),
            "worst": tok.masked_fill(~mask, 0.0).amax(1),
            "tokens": count,
            "hit": hit,
        }

    def row_losses(self, batch: dict):
        """Each row's own mean token loss (``[B]``, differentiable) of a collated causal-LM ``batch`` (see
        :meth:`row_stats`)."""
        return self.row_stats(batch)["row"]

    def exact_match(self, rows: list[dict], batch_size: int = 8, max_new_tokens: int = 32) -> float | None:
        """Share of chat rows whose greedy reply equals the reference (core's ``exact_match``); ``None`` when no
        row has a reference."""
        from peftlab.data import prompt_and_reference
        from peftlab.evaluate import exact_match
        from peftlab.generate import generate_batch

        pairs = [p for p in (prompt_and_reference(r) for r in rows) if p is not None]
        if not pairs:
            return None
        hits = 0
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            out = generate_batch(self.model, self.tokenizer, [p for p, _ in chunk], max_new_tokens=max_new_tokens)
            hits += sum(exact_match(o, ref) for o, (_, ref) in zip(out, chunk, strict=True))
        return hits / len(pairs)


def _reply_mask(items: list[dict], length: int):
    """``[B, length - 1]`` bool over a right-padded batch's shifted targets: the positions of each item's
    ``reply_span`` (target ``p`` is token ``p + 1``); ``None`` when the items carry no spans (``Mixture.encode``
    could not line them up with their rows)."""
    import torch

    if not all("reply_span" in it for it in items):
        return None
    mask = torch.zeros(len(items), max(length - 1, 0), dtype=torch.bool)
    for b, it in enumerate(items):
        if it["reply_span"] is not None:
            start, end = it["reply_span"]
            mask[b, start - 1 : end - 1] = True
    return mask


def pick_rows(dataset: str, split: str = "eval", max_samples: int | None = 64, seed: int = 0) -> list[dict]:
    """Rows of ``dataset``: its held-out split (``eval``, as ``peftlab eval`` picks it), its training split
    (``train``) or every row (``all``), at most ``max_samples``."""
    from peftlab.data import load_rows, split_rows

    from .compose import CompositionError

    rows = load_rows(dataset)
    if split != "all":
        if split not in ("train", "eval"):
            raise CompositionError(f"split {split!r}: use eval, train or all")
        rows = split_rows(rows, 0.1, seed)[split == "eval"]
    rows = rows[:max_samples] if max_samples else rows
    if not rows:
        raise CompositionError(f"dataset {dataset}: no rows in its {split} split")
    return rows


def sweep(
    parents: Sequence[str | os.PathLike],
    dataset: str,
    *,
    grid: Sequence[float] | None = None,
    output: str | os.PathLike | None = None,
    base: str | None = None,
    split: str = "eval",
    max_samples: int = 32,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    max_length: int = 256,
    exact: bool = True,
    seed: int = 0,
    store: AdapterStore | None = None,
    token: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    mixture: Mixture | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate two parents mixed at ``w`` and ``1 − w`` for each ``w`` of ``grid`` (default 0, 0.1 … 1) on
    ``dataset``'s rows: eval loss and exact match per point. With ``output``, ``sweep.json`` and ``sweep.png`` (eval
    loss and exact match against ``w``) are written there atomically. The base model loads once (or pass a
    ``mixture`` of the two parents to reuse one); progress lines go to stderr. Returns what ``sweep.json`` holds."""
    from peftlab.io import atomic_dir, check_output_dir, check_replaceable

    from .compose import CompositionError

    if len(parents) != 2:
        raise CompositionError(f"a sweep mixes two parents, got {len(parents)}")
    grid = list(DEFAULT_GRID if grid is None else grid)
    if not grid:
        raise CompositionError("the grid is empty: give at least one weight")
    grid = check_weights(grid, len(grid), "grid")
    if output is not None:
        check_output_dir(output)
        check_replaceable(output, lambda p: (p / SWEEP_JSON).is_file(), "sweep", "the sweep")  # before any pass
    if max_samples is not None and max_samples < 1:
        raise CompositionError(f"max_samples must be at least 1, got {max_samples}")
    rows = pick_rows(dataset, split, max_samples, seed)
    t0 = time.time()
    if mixture is None:
        _log(f"sweep: loading the base model and {len(parents)} parents", quiet)
        mixture = Mixture(parents, base=base, store=store, token=token, device=device, dtype=dtype)
    items = mixture.encode(rows, max_length)
    points = []
    for i, w in enumerate(grid):
        t = time.time()
        mixture.apply([w, 1.0 - w])
        point = {"w": w, "weights": [w, 1.0 - w], "eval_loss": mixture.loss(items, batch_size)}
        if exact:
            point["exact_match"] = mixture.exact_match(rows, batch_size, max_new_tokens)
        point["seconds"] = round(time.time() - t, 3)
        points.append(point)
        em = f", exact match {point['exact_match']:.3f}" if point.get("exact_match") is not None else ""
        _log(
            f"sweep: {i + 1}/{len(grid)} w={w:g}: eval loss {point['eval_loss']:.4f}{em} ({point['seconds']:.1f} s)",
            quiet,
        )
    best = min(points, key=lambda p: p["eval_loss"])
    result = {
        "parents": [
            {"arg": a, "path": str(r.path), "method": f.method.name}
            for a, r, f in zip(mixture.parents, mixture.resolved, mixture.files, strict=True)
        ],
        "dataset": dataset,
        "split": split,
        "rows": len(rows),
        "mode": mixture.mode,
        "points": points,
        "best": {"w": best["w"], "eval_loss": best["eval_loss"], "exact_match": best.get("exact_match")},
        "seconds": round(time.time() - t0, 2),
    }
    if output is not None:
        png = sweep_png(result)

        def write(tmp: Path) -> None:
            (tmp / SWEEP_JSON).write_text(json.dumps(result, indent=2) + "\n")
            if png is not None:
                (tmp / SWEEP_PNG).write_bytes(png)

        result["output"] = str(atomic_dir(Path(output), write))
        _log(f"sweep: wrote {Path(output) / SWEEP_JSON}" + (f" and {SWEEP_PNG}" if png else ""), quiet)
    return result


def sweep_png(result: dict[str, Any]) -> bytes | None:
    """Eval loss (left axis) and exact match (right axis) against the first parent's weight ``w``; ``None`` without
    matplotlib. The bytes carry no timestamp or version."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    except ImportError:
        return None
    import io

    pts = result["points"]
    names = [Path(p["arg"]).name or p["arg"] for p in result["parents"]]
    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.subplots()
    ws = [p["w"] for p in pts]
    ax.plot(ws, [p["eval_loss"] for p in pts], "o-", color="#4c72b0", markersize=4, label="eval loss")
    ax.set_xlabel(f"w: weight of {names[0]} (1 − w: {names[1]})")
    ax.set_ylabel("eval loss", color="#4c72b0")
    ax.grid(True, alpha=0.3)
    handles = ax.get_lines()
    if any(p.get("exact_match") is not None for p in pts):
        em = ax.twinx()
        em.plot(ws, [p.get("exact_match") for p in pts], "s--", color="#dd8452", markersize=4, label="exact match")
        em.set_ylabel("exact match", color="#dd8452")
        em.set_ylim(-0.05, 1.05)
        handles = [*handles, *em.get_lines()]
    ax.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8)
    ax.set_title(f"{result['dataset']} ({result['rows']} {result['split']} rows)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --- the CLI: `peftlab compose PARENT PARENT --sweep DATASET --output DIR` ------------------------------------


def add_sweep_arguments(parser) -> None:
    """Add ``--sweep DATASET`` and its options to ``peftlab compose``'s parser (``--output`` is compose's)."""
    g = parser.add_argument_group("weight sweep (--sweep)")
    g.add_argument(
        "--sweep",
        metavar="DATASET",
        default=None,
        help="instead of merging, evaluate the two parents mixed at w and 1-w for each w of --grid on DATASET "
        "(built-in name or data file) and write sweep.json and sweep.png to --output (default: no sweep, a merge)",
    )
    g.add_argument(
        "--grid", type=float, nargs="+", default=None, help="weights w of the first parent (default: 0 0.1 ... 1)"
    )
    _add_common(parser)


def _add_common(parser) -> None:
    """Options ``--sweep`` and ``--learn`` share (added once, whichever comes first)."""
    if getattr(parser, "_peftlab_mix_options", False):
        return
    parser._peftlab_mix_options = True
    g = parser.add_argument_group("sweeps and learned mixtures")
    g.add_argument("--base", default=None, help="base model (default: the one the parents record)")
    g.add_argument(
        "--split",
        default=None,
        choices=("eval", "train", "all"),
        help="which rows of the dataset (default: eval for --sweep, all for --learn)",
    )
    g.add_argument("--max-samples", type=int, default=None, help="rows used at most (default: 32 sweep, 100 learn)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="reply length for exact match (default: 32)")
    g.add_argument("--batch-size", type=int, default=8, help="rows per forward pass (default: 8)")
    g.add_argument("--max-length", type=int, default=256, help="tokens per row at most (default: 256)")
    g.add_argument("--no-exact-match", action="store_true", help="eval loss only (no generation; faster)")
    g.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on CUDA, else fp32)")


def run_sweep(args) -> int:
    """``peftlab compose A B --sweep DATASET --output DIR``: print the points (``--json``: the whole result)."""
    from .compose import CompositionError

    if getattr(args, "weights", None):
        raise CompositionError("--sweep picks the weights itself (--grid); drop --weights")
    result = sweep(
        args.parents,
        args.sweep,
        grid=args.grid,
        output=args.output,
        base=args.base,
        split=args.split or "eval",
        max_samples=args.max_samples or 32,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        max_length=args.max_length,
        exact=not args.no_exact_match,
        token=getattr(args, "token", None),
        device=args.device,
        dtype=args.dtype,
    )
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2), flush=True)
        return 0
    print(f"{'w':>5} {'eval loss':>10} {'exact match':>12}")
    for p in result["points"]:
        em = "" if p.get("exact_match") is None else f"{p['exact_match']:.3f}"
        print(f"{p['w']:>5g} {p['eval_loss']:>10.4f} {em:>12}")
    print(f"best (lowest eval loss): w={result['best']['w']:g}; wrote {result.get('output')}", flush=True)
    return 0

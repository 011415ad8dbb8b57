"""Markdown tables of the summaries that ``bench.runner`` writes."""

from __future__ import annotations

from typing import Any

from .runner import METRICS


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def pair_markdown(s: dict[str, Any]) -> str:
    env = s.get("env", {})
    loads = env.get("loadavg_1min") or []
    lines = [f"### {s['pair']} (peftlab `{s['method']}` vs peft)", ""]
    if s.get("note"):
        lines += [s["note"], ""]
    lines += [
        f"Config: `{s['config']}`. {env.get('repeats', '?')} rounds alternating peftlab/peft, each variant in "
        f"its own process; torch {env.get('torch', '?')}, {env.get('threads', '?')} threads, "
        f"{env.get('cpus', '?')} CPUs, 1-min load average during the run "
        f"{min(loads, default=0):.1f}–{max(loads, default=0):.1f}. Options: `{env.get('options', {})}`.",
        "",
        "| metric | peftlab | peft | peftlab / peft |",
        "|---|---:|---:|---:|",
    ]
    for key, label, _ in METRICS:
        row = s["table"].get(key, {})
        lines.append(f"| {label} | {_fmt(row.get('peftlab'))} | {_fmt(row.get('peft'))} | {_fmt(row.get('ratio'))} |")
    for key, label in (
        ("merged_vs_base", "merged / base tok/s (same process)"),
        ("unloaded_vs_base", "merged+unloaded / base tok/s (same process)"),
    ):
        row = s["table"].get(key, {})
        lines.append(f"| {label} | {_fmt(row.get('peftlab'))} | {_fmt(row.get('peft'))} | |")
    spread = s.get("eval_loss_spread_across_seeds", {})
    lines += [
        "",
        f"Eval-loss spread across seeds: peftlab {_fmt(spread.get('peftlab'))}, peft {_fmt(spread.get('peft'))}.",
    ]
    curves = s.get("loss_curves", {})
    if curves:
        n = max(len(c) for c in curves.values())
        marks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
        lines += [
            "",
            "Train loss (mean over seeds) at step: "
            + ", ".join(f"{i + 1}: " + " / ".join(f"{c[i]:.3f}" for c in curves.values()) for i in marks)
            + f" ({' / '.join(curves)})",
        ]
    for err in s.get("errors", []):
        lines.append(f"\n**error** {err}")
    return "\n".join(lines) + "\n"

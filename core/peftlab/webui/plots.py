"""The loss curve: training loss per step, and eval loss where the trainer measured it."""

from __future__ import annotations

import pandas as pd

COLUMNS = ["step", "loss", "series"]
SERIES = ("train", "eval")
COLORS = {"train": "#4f46e5", "eval": "#f59e0b"}
DTYPES = {"step": "int64", "loss": "float64", "series": "object"}  # typed even when empty: the plot reads axis
# kinds from the dtypes, and an empty untyped frame would make both axes categorical


def loss_frame(events: list[dict]) -> pd.DataFrame:
    """One row per point: ``series`` is "train" (a step's loss) or "eval" (held-out loss).

    Once there is a point, every series has a row (a missing one gets a single row with no loss, which draws
    nothing): gradio's plot fixes its colour scale to the series in the first data it draws.
    """
    rows = []
    for e in events:
        if e.get("event") == "step":
            rows.append({"step": e["step"], "loss": e["loss"], "series": "train"})
        elif e.get("event") == "eval" and e.get("eval_loss") is not None:
            rows.append({"step": e["step"], "loss": e["eval_loss"], "series": "eval"})
    if rows:
        first = min(r["step"] for r in rows)
        rows += [
            {"step": first, "loss": float("nan"), "series": s}
            for s in SERIES
            if not any(r["series"] == s for r in rows)
        ]
    return pd.DataFrame(rows, columns=COLUMNS).astype(DTYPES)

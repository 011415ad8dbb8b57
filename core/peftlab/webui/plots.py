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


def loss_chart(events: list[dict], title: str = "Loss"):
    """The loss plot as a Vega-Lite chart (``gr.Plot`` draws it): the training loss as a line, held-out losses as
    points (one eval is a visible dot; two are not joined by a diagonal), whole-number step ticks, axis titles.
    ``None`` before the first point: the page shows an empty plot, not an empty frame's axes."""
    import altair as alt

    frame = loss_frame(events).dropna(subset=["loss"])
    if frame.empty:
        return None
    scale = alt.Scale(domain=list(COLORS), range=list(COLORS.values()))
    steps = frame["step"]
    x = alt.X(
        "step:Q",
        title="step",
        scale=alt.Scale(domain=[int(steps.min()), max(int(steps.max()), int(steps.min()) + 1)], nice=False),
        axis=alt.Axis(tickMinStep=1, format="d"),
    )
    y = alt.Y("loss:Q", title="loss", scale=alt.Scale(zero=False))
    color = alt.Color("series:N", scale=scale, title=None, legend=alt.Legend(orient="top"))
    tip = [alt.Tooltip("series:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4f")]
    base = alt.Chart(frame)
    train = base.transform_filter(alt.datum.series == "train").mark_line(point=alt.OverlayMarkDef(size=18))
    evals = base.transform_filter(alt.datum.series == "eval").mark_point(size=70, filled=True, shape="diamond")
    chart = alt.layer(
        train.encode(x=x, y=y, color=color, tooltip=tip), evals.encode(x=x, y=y, color=color, tooltip=tip)
    )
    return chart.properties(title=title, width="container", height=280)

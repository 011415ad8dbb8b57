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


def step_axis(steps: pd.Series):
    """An x axis of whole steps: every step labelled when there are few (Vega would put ticks at 1.5 and print "2"
    twice), else whole-number ticks only."""
    import altair as alt

    lo, hi = int(steps.min()), int(steps.max())
    values = list(range(lo, max(hi, lo + 1) + 1)) if hi - lo <= 12 else alt.Undefined
    return alt.Axis(values=values, tickMinStep=1, format="d")


SVG = {"embedOptions": {"renderer": "svg"}}  # vega-embed draws SVG (marks a page or a test can inspect), not canvas
WIDTH = 520  # px: gradio gives an altair chart with width="container" no width at all (12 px) in a tab


def loss_chart(events: list[dict], title: str = "Loss", width: int = WIDTH):
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
        scale=alt.Scale(domain=[int(steps.min()), max(int(steps.max()), int(steps.min()) + 1)], nice=False, padding=12),
        axis=step_axis(steps),
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
    return chart.properties(title=title, width=width, height=260, usermeta=SVG)


def series_chart(
    frame: pd.DataFrame | None, x: str, y: str, color: str, title: str, *, mark: str = "line", width: int = WIDTH
):
    """Several series on one Vega-Lite chart (``gr.Plot``): lines (with their points) or points, one colour per
    value of ``color``, the whole domain of series fixed from ``frame`` (every series drawn, whichever came first).
    Whole-number ticks when ``x`` holds integers. ``None`` for no data."""
    import altair as alt

    if frame is None or frame.empty:
        return None
    integer = pd.api.types.is_integer_dtype(frame[x])
    axis = step_axis(frame[x]) if integer else alt.Axis()
    domain = list(dict.fromkeys(frame[color].tolist()))
    enc = dict(
        x=alt.X(f"{x}:Q", title=x, axis=axis, scale=alt.Scale(zero=False)),
        y=alt.Y(f"{y}:Q", title=y, scale=alt.Scale(zero=False)),
        color=alt.Color(f"{color}:N", title=color, scale=alt.Scale(domain=domain), legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip(f"{color}:N"), alt.Tooltip(f"{x}:Q"), alt.Tooltip(f"{y}:Q", format=".4g")],
    )
    chart = alt.Chart(frame, usermeta=SVG)
    chart = (
        chart.mark_line(point=alt.OverlayMarkDef(size=16)) if mark == "line" else chart.mark_point(size=90, filled=True)
    )
    return chart.encode(**enc).properties(title=title, width=width, height=260)

"""Form widgets generated from the schema (``peftlab.schema``): a method's config fields and ``TrainArgs``.

A widget shows a field's default and help; reading the form back gives text flags (``{"r": "4"}``) for only the
fields the user changed, which is exactly what ``peftlab train --r 4`` takes, so the app and the CLI agree: the
same ``FieldSpec.parse`` reads them and the same ``__post_init__`` validates them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import gradio as gr

from ..schema import FieldSpec, fields_of
from ..train import TrainArgs

# TrainArgs fields the form shows up front; the rest go under "More training settings".
MAIN_TRAIN_FIELDS = ("max_steps", "learning_rate", "batch_size", "max_length")
# TrainArgs fields the app sets itself (or that have their own widget).
SKIP_TRAIN_FIELDS = ("method", "method_config", "base_model", "dataset", "output_dir", "resume")


def default_text(spec: FieldSpec) -> str:
    """A field's default as the form's text shows it ('' = unset)."""
    value = spec.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def field_component(spec: FieldSpec, elem_id: str) -> gr.components.Component:
    """One widget for one config field: kind → Number / Checkbox / Dropdown / Textbox, help as info."""
    label, info = spec.name, spec.help or None
    if spec.kind in ("int", "float") and not spec.optional:
        return gr.Number(
            value=spec.default, label=label, info=info, precision=0 if spec.kind == "int" else None, elem_id=elem_id
        )
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.kind == "choice" and spec.choices:
        choices = [(str(c), str(c)) for c in spec.choices]
        if spec.optional:
            choices = [("(none)", ""), *choices]  # '' reads back as None
        return gr.Dropdown(choices=choices, value=default_text(spec), label=label, info=info, elem_id=elem_id)
    # optional numbers are text: a Number widget cannot be empty, and empty means "automatic" here
    placeholder = {
        "list": "comma-separated; empty = automatic",
        "dict": "JSON object; empty = none",
        "int": "empty = automatic",
        "float": "empty = automatic",
    }.get(spec.kind)
    return gr.Textbox(value=default_text(spec), label=label, info=info, placeholder=placeholder, elem_id=elem_id)


def value_text(spec: FieldSpec, value: Any) -> str:
    """A widget's value as flag text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and spec.kind == "int" and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _same(spec: FieldSpec, text: str) -> bool:
    default = default_text(spec)
    if spec.kind in ("int", "float") and text and default:
        try:
            return math.isclose(float(text), float(default))
        except ValueError:
            return False
    if spec.kind == "list":
        return [t.strip() for t in text.split(",") if t.strip()] == [t.strip() for t in default.split(",") if t.strip()]
    return text == default


def changed_flags(specs: list[FieldSpec], values: list[Any]) -> dict[str, str]:
    """``{field: text}`` for the fields whose widget differs from the default (the rest keep defaults)."""
    out = {}
    for spec, value in zip(specs, values, strict=True):
        text = value_text(spec, value)
        if _same(spec, text):
            continue
        if text == "" and not spec.optional:
            continue  # a cleared required field: keep the default rather than fail
        out[spec.name] = text if text != "" else "none"
    return out


def train_specs() -> list[FieldSpec]:
    """The trainer settings the form offers: ``TrainArgs``'s fields, less those the app sets itself."""
    return [s for s in fields_of(TrainArgs) if s.name not in SKIP_TRAIN_FIELDS]


def train_component(spec: FieldSpec) -> gr.components.Component:
    """A trainer setting's widget: like ``field_component``, laid out for the Training section."""
    elem_id, label, info = f"train-{spec.name}", spec.name.replace("_", " "), spec.help or None
    if spec.kind in ("int", "float") and not spec.optional:
        return gr.Number(
            value=spec.default,
            label=label,
            info=info,
            precision=0 if spec.kind == "int" else None,
            elem_id=elem_id,
            minimum=0,
            step=1 if spec.kind == "int" else 0.0001,
            min_width=120,
        )
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, label=label, info=info, elem_id=elem_id)
    return gr.Textbox(
        value=default_text(spec),
        label=label,
        info=info,
        elem_id=elem_id,
        placeholder="empty = default" if spec.optional else None,
        min_width=120,
    )


def widget_value(spec: FieldSpec, text: Any) -> Any:
    """What ``field_component`` / ``train_component``'s widget shows for a field whose flag text is ``text``
    (``None``: the default) — the inverse of ``value_text``: saved or running settings fill a form with it."""
    if text is None:
        text = default_text(spec)
    text = "" if str(text).strip().lower() == "none" and spec.optional else str(text)
    if spec.kind in ("int", "float") and not spec.optional:
        try:
            number = float(text)
        except ValueError:
            return spec.default
        return int(number) if spec.kind == "int" else number
    if spec.kind == "bool":
        return text.strip().lower() in ("true", "1", "yes", "on")
    return text

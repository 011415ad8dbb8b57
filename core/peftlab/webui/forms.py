"""Form widgets generated from the schemas: a method's config fields and the trainer's ``TrainArgs``.

A widget shows a field's default and help; reading the form back gives text flags (``{"r": "4"}``) for only the
fields the user changed, which is exactly what ``peftlab train --r 4`` takes, so the app and the CLI agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import gradio as gr

from ..method import FieldSpec
from ..train import TrainArgs

# TrainArgs fields the form shows up front; the rest go under "More training settings".
MAIN_TRAIN_FIELDS = ("max_steps", "learning_rate", "batch_size", "max_length")
# TrainArgs fields the app sets itself (or that have their own widget).
SKIP_TRAIN_FIELDS = ("method", "method_config", "base_model", "dataset", "output_dir", "resume")
TRAIN_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str"}


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
        return gr.Number(value=spec.default, label=label, info=info, precision=0 if spec.kind == "int" else None,
                         elem_id=elem_id)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.kind == "choice" and spec.choices:
        choices = [(str(c), str(c)) for c in spec.choices]
        if spec.optional:
            choices = [("(none)", ""), *choices]  # '' reads back as None
        return gr.Dropdown(choices=choices, value=default_text(spec), label=label, info=info, elem_id=elem_id)
    # optional numbers are text: a Number widget cannot be empty, and empty means "automatic" here
    placeholder = {"list": "comma-separated; empty = automatic", "dict": "JSON object; empty = none",
                   "int": "empty = automatic", "float": "empty = automatic"}.get(spec.kind)
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


@dataclasses.dataclass
class TrainField:
    """A ``TrainArgs`` field as the form sees it."""

    name: str
    kind: str  # int, float, bool, str
    default: Any
    help: str
    optional: bool
    choices: list | None = None


def train_fields() -> list[TrainField]:
    """The trainer settings the form offers, from ``TrainArgs`` (its field types, defaults and help)."""
    out = []
    for f in dataclasses.fields(TrainArgs):
        if f.name in SKIP_TRAIN_FIELDS:
            continue
        type_text = str(f.type).replace(" ", "")
        optional = type_text.endswith("|None")
        kind = TRAIN_KINDS.get(type_text.removesuffix("|None"), "str")
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(TrainField(f.name, kind, default, f.metadata.get("help", ""), optional, f.metadata.get("choices")))
    return out


def train_component(spec: TrainField) -> gr.components.Component:
    elem_id, label, info = f"train-{spec.name}", spec.name.replace("_", " "), spec.help or None
    if spec.kind in ("int", "float") and not spec.optional:
        return gr.Number(value=spec.default, label=label, info=info, precision=0 if spec.kind == "int" else None,
                         elem_id=elem_id, minimum=0, step=1 if spec.kind == "int" else 0.0001, min_width=120)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.choices:
        return gr.Dropdown(choices=list(spec.choices), value=spec.default, label=label, info=info, elem_id=elem_id)
    return gr.Textbox(value="" if spec.default is None else str(spec.default), label=label, info=info,
                      elem_id=elem_id, placeholder="empty = default" if spec.optional else None, min_width=120)


def train_settings(specs: list[TrainField], values: list[Any]) -> dict[str, Any]:
    """Trainer settings for ``jobs.start_job``: empty widgets are left out (the trainer's default applies)."""
    out: dict[str, Any] = {}
    for spec, value in zip(specs, values, strict=True):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            if spec.kind == "int":
                value = int(value)
            elif spec.kind == "float":
                value = float(value)
            elif isinstance(value, str):
                value = value.strip()
        except ValueError:
            raise ValueError(f"{spec.name}: {value!r} is not a number") from None
        out[spec.name] = value
    return out

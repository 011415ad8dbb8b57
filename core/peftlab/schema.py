"""The one field description that the CLI flags, the web forms and ``adapter_config.json`` are read from.

Config dataclasses (``TrainArgs`` and every ``MethodConfig``) declare fields with ``option(...)``;
``fields_of(cls)`` turns them into ``FieldSpec``s, ``FieldSpec.parse`` turns user text into a value of the
field's type, and ``from_values(cls, {...})`` builds the dataclass from text (or typed) values, so its
``__post_init__`` is the one place that validates them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: typing.Sequence | None = None,
    default_factory: Any = dataclasses.MISSING,
    flag: str | None = None,
) -> Any:
    """A config field with its help text (shown by ``--help``, the UI form and ``methods --json``).

    ``flag`` names the command-line flag when it differs from the field name (``flag="base"`` gives
    ``--base``; ``--<field-name>`` then stays accepted, unlisted, as an alias).
    """
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = list(choices)
    if flag is not None:
        meta["flag"] = flag
    if isinstance(default, (list, dict, set)):
        value = default
        default, default_factory = dataclasses.MISSING, (lambda: type(value)(value))
    return field(default=default, default_factory=default_factory, metadata=meta)


@dataclass
class FieldSpec:
    """One config field as the CLI, the UI and ``methods --json`` see it."""

    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "list" | "dict"
    default: Any
    help: str
    optional: bool  # None is allowed
    choices: list | None = None
    flag: str = ""  # the command-line name when it is not the field's own

    @property
    def option_string(self) -> str:
        """The command-line flag: ``--lora-alpha``, or ``--base`` for a field declared with ``flag="base"``."""
        return "--" + (self.flag or self.name).replace("_", "-")

    @property
    def aliases(self) -> list[str]:
        """Other accepted spellings of the flag (unlisted in ``--help``): ``--<field-name>`` when renamed."""
        own = "--" + self.name.replace("_", "-")
        return [own] if own != self.option_string else []

    def parse(self, text: str | None) -> Any:
        """Turn user text (a CLI flag, a UI textbox) into a value of this field's type."""
        if text is None or (self.optional and str(text).strip().lower() in ("", "none", "null")):
            return None
        text = str(text).strip()
        try:
            if self.kind == "int":
                return int(text)
            if self.kind == "float":
                return float(text)
            if self.kind == "bool":
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if self.kind == "dict":
                value = json.loads(text)
                if not isinstance(value, dict):
                    raise ValueError(text)
                return value
            if self.kind == "list":
                items = [t.strip() for t in text.split(",") if t.strip()]
                return items[0] if len(items) == 1 and self.choices is None and _is_special(items[0]) else items
        except ValueError:  # json.JSONDecodeError is one too
            raise ConfigError(f"{self.name}: cannot read {text!r} as {self.kind}") from None
        return text

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "type": self.kind,
            "default": self.default,
            "help": self.help,
            "optional": self.optional,
            "choices": self.choices,
        }


def _is_special(item: str) -> bool:
    # a single "all-linear" or a regex stays a string rather than a one-item list
    return item == "all-linear" or any(c in item for c in "^$*+?[]()|\\")


def _kind(tp: Any) -> tuple[str, bool, list | None]:
    """Map an annotation to (kind, optional, choices)."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) < len(args)
        if any(typing.get_origin(a) in (list, tuple) for a in non_none):
            return "list", optional, None
        if str in non_none and len(non_none) > 1:  # e.g. bool | str: free text, the config validates it
            return "str", optional, None
        kind, _, choices = _kind(non_none[0])
        return kind, optional, choices
    if origin is Literal:
        return "choice", False, list(args)
    if origin in (list, tuple):
        return "list", False, None
    if origin is dict or tp is dict:
        return "dict", False, None
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, "str"), False, None


def fields_of(cls: type) -> list[FieldSpec]:
    """The fields of a config dataclass (a ``MethodConfig`` subclass, ``TrainArgs``) as ``FieldSpec``s.

    Annotations are resolved with ``typing.get_type_hints``: modules use ``from __future__ import
    annotations``, so ``dataclasses.Field.type`` is only a string.
    """
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, optional, choices = _kind(hints[f.name])
        choices = f.metadata.get("choices", choices)
        if choices is not None and kind == "str":
            kind = "choice"
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        specs.append(
            FieldSpec(f.name, kind, default, f.metadata.get("help", ""), optional, choices, f.metadata.get("flag", ""))
        )
    return specs


def parse_values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: value}`` with text values (CLI flags, form text) parsed to their field's type; other values
    pass as they are. A name that is not a field of ``cls`` is a ``ConfigError`` listing the fields."""
    specs = {s.name: s for s in fields_of(cls)}
    unknown = set(values) - set(specs)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(specs)}")
    return {k: specs[k].parse(v) if isinstance(v, str) else v for k, v in values.items()}


def from_values(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build ``cls`` from ``parse_values``; missing fields keep their defaults and ``__post_init__`` validates."""
    kwargs = parse_values(cls, values)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None

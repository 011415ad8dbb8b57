"""What a method plugin registers: a ``Method`` with a ``MethodConfig`` and ``Capabilities``."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import AdapterMismatchError, ConfigError
from .hookspecs import hookimpl
from .schema import FieldSpec, fields_of, option  # noqa: F401

TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")

# Keys of adapter_config.json that core writes and reads itself; never part of a method config.
CORE_KEYS = frozenset(
    {
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "auto_mapping",
        "peft_version",
        "modules_to_save",
    }
)


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; core and the UI act on these (they never look at a method's name)."""

    mergeable: bool = False  # merge() folds it into the weights
    stackable: bool = True  # may share a model with other adapters (of any method)
    kv_cache: bool = False  # feeds keys/values through the model's cache (prefix-style)
    virtual_tokens: bool = False  # lengthens the input with virtual tokens
    needs_quantized_base: bool = False  # implements load_base_model with a quantized model
    mixed_batch: bool = False  # rows of one batch may use different adapters of this method
    task_types: tuple[str, ...] = TASK_TYPES
    merge_note: str = ""  # why it cannot merge, shown where "merge" is greyed out
    stack_note: str = ""  # why it cannot stack
    combinations: tuple[str, ...] = ()  # weighted-merge types its combine() computes (peft's names: cat, svd, ...)
    combine_note: str = ""  # why it cannot be combined, shown when a composition is refused
    scalable: bool = False  # its scale() hook multiplies its effect by a weight (stacks, learned mixtures)
    scale_note: str = ""  # why its effect cannot be weighted
    packable: bool = True  # trains on packed rows (one sequence, position_ids restarting per row)
    pack_note: str = ""  # why it cannot train packed (e.g. virtual tokens are inserted per row)


@dataclass(frozen=True)
class AdapterWeights:
    """The tensors of one adapter: PEFT-format ``tensors`` and peftlab-only ``extra`` state."""

    tensors: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Base class of every method's config dataclass: the schema for CLI, UI and adapter_config.json.

    Subclasses add fields with ``option(default, help=...)`` and validate in ``__post_init__``
    (raise ``ConfigError``). ``peft_ignored`` lists keys that ``peft`` writes for this method
    and that peftlab may ignore when they hold the given value (``...`` = any value).
    """

    peft_ignored: ClassVar[dict[str, Any]] = {}

    @classmethod
    def fields(cls) -> list[FieldSpec]:
        return fields_of(cls)

    def to_dict(self) -> dict[str, Any]:
        """The method's keys of ``adapter_config.json`` (JSON-ready)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, (tuple, set)) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> MethodConfig:
        """Build a config from ``adapter_config.json`` keys (or CLI/UI values).

        Core keys are skipped, keys in ``peft_ignored`` with a matching value are dropped, and unset keys
        (``None``, ``False``, empty) are harmless. A key in ``peft_ignored`` with another value is an error naming
        it (the method knows that value changes what the adapter computes: LoRA's ``use_dora=True``). Any other
        key is unknown: in an ``adapter_config.json`` (``data`` has a ``peft_type``) it comes from a newer peft and
        is ignored with a warning naming it, as peft does; among values given by hand it is an error (a typo).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs, refused, unknown = {}, [], []
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            elif key in CORE_KEYS:
                continue
            elif value in (None, False, [], {}, ""):
                continue  # an unset option (of a newer peft, maybe): harmless
            elif key in cls.peft_ignored:
                if cls.peft_ignored[key] is not ... and cls.peft_ignored[key] != value:
                    refused.append(f"{key}={value!r}")
            else:
                unknown.append(f"{key}={value!r}")
        if refused or (unknown and "peft_type" not in data):
            raise ConfigError(f"{source}: {cls.__name__} does not support {', '.join(refused + unknown)}")
        if unknown:
            warnings.warn(
                f"{source}: ignoring {', '.join(unknown)}: not {cls.__name__} options (written by a newer peft?)",
                UserWarning,
                stacklevel=2,
            )
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_strings(cls, values: dict[str, str | None]) -> MethodConfig:
        """Build a config from text values (CLI flags, UI textboxes); missing keys keep defaults."""
        specs = {s.name: s for s in cls.fields()}
        unknown = set(values) - set(specs)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(specs)}")
        return cls(**{k: specs[k].parse(v) if isinstance(v, str) else v for k, v in values.items()})


class Method:
    """Base for a method's registration object. Set the declarations, add ``@hookimpl`` methods.

    The declarations are those of ``peftlab.hookspecs.ATTRIBUTES`` (documented there), with these defaults.
    Gives a default ``save``/``load`` pair for methods that implement ``tensor_map``; override ``save``/``load``
    (decorated with ``@hookimpl``) for anything else.
    """

    name: str = ""
    config_class: type[MethodConfig] = MethodConfig
    peft_type: str = ""
    capabilities: Capabilities = Capabilities()
    description: str = ""
    train_defaults: dict[str, Any] = {}
    module_prefix: str = "base_model.model."

    def peft_key(self, path: str, tensor: str = "") -> str:
        """The PEFT on-disk key of ``tensor`` (e.g. ``"lora_A.weight"``) of the module at ``path``:
        ``module_prefix + path + "." + tensor``, with wrapper parts (``.base_layer``) left out, as peft writes it."""
        key = ".".join(part for part in f"{path}.{tensor}".strip(".").split(".") if part != "base_layer")
        return self.module_prefix + key

    def tensor_map(self, model, config, adapter_name) -> dict[str, torch.Tensor]:
        """``{PEFT key: live tensor}`` of adapter ``adapter_name``, keys as ``save`` documents them (build them with
        ``peft_key``). The default ``save`` copies these tensors out; the default ``load`` copies saved ones in,
        refusing missing keys and other shapes by name."""
        raise NotImplementedError(f"{type(self).__name__} must implement tensor_map or save/load")

    @hookimpl
    def save(self, model, config, adapter_name) -> AdapterWeights:
        tensors = {k: v.detach().clone().contiguous() for k, v in self.tensor_map(model, config, adapter_name).items()}
        return AdapterWeights(tensors)

    @hookimpl
    def load(self, model, config, adapter_name, weights: AdapterWeights) -> None:
        copy_into(self.tensor_map(model, config, adapter_name), weights.tensors, what=self.name)


def copy_into(live: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``saved`` tensors into ``live`` ones, refusing missing keys and shape mismatches."""
    missing = sorted(set(live) - set(saved))
    unexpected = sorted(set(saved) - set(live))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) the model has no place for, e.g. {unexpected[0]}")
        raise AdapterMismatchError(f"{what} adapter does not fit this model: " + "; ".join(parts))
    with torch.no_grad():
        for key, dst in live.items():
            src = saved[key]
            if tuple(src.shape) != tuple(dst.shape):
                raise AdapterMismatchError(
                    f"{what} adapter tensor {key} has shape {tuple(src.shape)} but the model expects "
                    f"{tuple(dst.shape)}: was it made for another base model?"
                )
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

"""The adapter doctor: checks an adapter folder against its base model before anything loads it.

``diagnose(folder, base)`` runs the checks below in order and returns a ``Report`` (each check passed, failed or
skipped, with why); ``check(folder, base)`` raises ``peftlab.AdapterError`` listing the failures (``pull`` and every
load call it). Nothing is unpickled and no tensor is read: the weights file's header gives names and shapes, and the
base model is built from its config on the ``meta`` device (no memory, no weights), so the doctor is quick even for
a large base. It works offline: a base that cannot be resolved here makes the checks that need it *skipped*.

1. ``files``: ``adapter_config.json`` and ``adapter_model.safetensors`` present; pickles named and refused.
2. ``safetensors``: the weights file's header opens.
3. ``config``: ``adapter_config.json`` (and ``peftlab.json``) parse; ``peft_type`` present.
4. ``method``: an installed method loads it (else: which plugin to install) and its config class accepts it.
5. ``base_model``: the base is the recorded one, or has the same fingerprint (``peftlab.io.FINGERPRINT_KEYS``).
6. ``vocab_and_hidden``: vocabulary and hidden size agree (fingerprint, a prompt's ``token_dim``, task heads).
7. ``targets``: every module ``target_modules`` names exists in the base.
8. ``shapes``: every tensor in the file is one the method makes on this base, with that shape.
9. ``load`` (only with ``load_weights=True``): the real base is loaded and the adapter loaded into it.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from peftlab import AdapterError, ConfigError, PeftlabError, UnknownMethodError, add_adapter, load_adapter, registry
from peftlab.io import (
    CONFIG_FILE,
    EXTRA_FILE,
    FINGERPRINT_KEYS,
    HEAD_PREFIXES,
    META_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    adapter_in,
    fingerprint,
)
from peftlab.kit import ALL_LINEAR, KVGeometry, is_linear, target_matches
from peftlab.models import hub_offline, load_model, resolve_source

CHECKS = ("files", "safetensors", "config", "method", "base_model", "vocab_and_hidden", "targets", "shapes")
MARKS = {True: "✓", False: "✗", None: "–"}
SHOWN = 3  # mismatching tensors named in a message before "and N more"

# The plugin distributions that provide peft_types, for methods that are not installed (an installed method's
# own declaration wins, see ``plugin_for``). PREFIX_TUNING is two methods told apart by ``prefix_projection``.
KNOWN_PLUGINS: dict[str, str | Callable[[dict], str]] = {
    "LORA": "peftlab-lora",
    "ADALORA": "peftlab-adalora",
    "PROMPT_TUNING": "peftlab-prompt-tuning",
    "P_TUNING": "peftlab-p-tuning",
    "PREFIX_TUNING": lambda cfg: "peftlab-prefix-tuning" if cfg.get("prefix_projection") else "peftlab-p-tuning-v2",
    "BOTTLENECK_ADAPTER": "peftlab-adapter",
    "BITFIT": "peftlab-bitfit",
}


@dataclass
class Check:
    """One check's outcome: ``ok`` is ``True`` (passed), ``False`` (failed) or ``None`` (skipped; ``detail`` says
    why). A ``warning`` is a pass with something the user should know (a pickle file that is ignored)."""

    name: str
    ok: bool | None
    detail: str
    warning: bool = False

    @property
    def status(self) -> str:
        return {True: "pass", False: "fail", None: "skipped"}[self.ok]

    def line(self, width: int = 0) -> str:
        detail = f"skipped: {self.detail}" if self.ok is None else self.detail
        return f"{MARKS[self.ok]} {self.name:<{width}}  {detail}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "status": self.status, "detail": self.detail, "warning": self.warning}


@dataclass
class Report:
    """The doctor's findings for one adapter folder, in check order."""

    adapter: str
    base: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check that ran passed (skipped checks do not count against it)."""
        return all(c.ok is not False for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def __getitem__(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def to_json(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "base": self.base, "ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def format(self) -> str:
        """A text table: ✓ passed, ✗ failed, – skipped, each with its reason; then the verdict."""
        width = max((len(c.name) for c in self.checks), default=0)
        counts = {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "skipped")}
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"adapter doctor: {self.adapter}" + (f" (base: {self.base})" if self.base else ""),
            *(f"  {c.line(width)}" for c in self.checks),
            f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped",
        ]
        return "\n".join(lines)


def diagnose(
    adapter_dir: str | os.PathLike, base: str | None = None, *, load_weights: bool = False, token: str | None = None
) -> Report:
    """Check the adapter in ``adapter_dir`` against ``base`` (a Hub id, a local folder, or ``None``: the base the
    adapter records). With ``load_weights`` the real base is also loaded and the adapter loaded into it. A
    composition recipe (``composition.json``) is checked as ``diagnose_recipe`` says; ``token`` reaches its Hub
    parents."""
    from peftlab.recipe import is_recipe

    if is_recipe(adapter_dir):
        return diagnose_recipe(adapter_dir, base, load_weights=load_weights, token=token)
    doctor = _Doctor(Path(adapter_dir).expanduser(), base, load_weights)
    report = Report(str(doctor.path), base)
    steps = [
        doctor.files,
        doctor.safetensors,
        doctor.config,
        doctor.method,
        doctor.base_model,
        doctor.vocab_and_hidden,
        doctor.targets,
        doctor.shapes,
    ]
    if load_weights:
        steps.append(doctor.load)
    for step in steps:
        name = step.__name__
        try:
            ok, detail, warning = step()
        except Exception as e:  # noqa: BLE001 - a bug or an odd input in one check must not hide the others
            ok, detail, warning = False, f"the check itself failed: {type(e).__name__}: {e}", False
        report.checks.append(Check(name, ok, detail, warning))
    return report


def diagnose_recipe(
    recipe_dir: str | os.PathLike, base: str | None = None, *, load_weights: bool = False, token: str | None = None
) -> Report:
    """Check a composition recipe: ``recipe`` (``composition.json`` reads), one ``parent N`` check per parent (it
    is where the recipe says, and its weights have the sha256 the recipe recorded), ``stack`` (the methods can be
    stacked, and weighted where the weight is not 1), then every parent's own checks, named ``parent N: <check>``
    (against ``base``, or each parent's recorded base), and with ``load_weights`` a ``load`` of the whole recipe
    into the real base. A check that cannot run because an earlier one failed is skipped, saying which."""
    from peftlab.io import read_adapter
    from peftlab.recipe import changed_file, check_stack, describe_change, parent_folder, read_recipe

    path = Path(recipe_dir).expanduser()
    report = Report(str(path), base)
    add = report.checks.append
    try:
        recipe = read_recipe(path)
    except PeftlabError as e:
        add(Check("recipe", False, str(e)))
        return report
    ws = ", ".join(f"{w:g}" for w in recipe.weights)
    add(Check("recipe", True, f"{len(recipe.parents)} parents, weights {ws}, base {recipe.base_model}"))
    folders, files = {}, {}  # only parents that pass: their own checks run below (never a recipe: no recursion)
    for i, parent in enumerate(recipe.parents, 1):
        name = f"parent {i}"
        try:
            folder = parent_folder(recipe, parent, token=token)  # refuses a parent that is a recipe (itself, say)
            if not (Path(folder) / WEIGHTS_FILE).is_file():
                add(Check(name, False, f"{parent.describe()}: {WEIGHTS_FILE} is missing in {folder}"))
                continue
            change = changed_file(parent, adapter_in(folder))
            if change:
                add(Check(name, False, f"{parent.describe()} changed: {describe_change(change)}"))
                continue
            files[i] = read_adapter(folder, method=parent.method)
        except (PeftlabError, OSError) as e:
            add(Check(name, False, str(e)))
            continue
        folders[i] = folder
        add(Check(name, True, f"{parent.describe()} ({parent.method}) at {folder}, sha256 as recorded"))
    if len(files) == len(recipe.parents):
        try:
            labels = [f"parent {i} ({p.describe()})" for i, p in enumerate(recipe.parents, 1)]
            check_stack([files[i] for i in sorted(files)], recipe.weights, labels)
            add(Check("stack", True, "every method can be stacked, and weighted where its weight is not 1"))
        except PeftlabError as e:
            add(Check("stack", False, str(e)))
    else:
        add(Check("stack", None, "a parent is missing or changed (see above)"))
    for i, folder in folders.items():
        for c in diagnose(folder, base).checks:
            add(Check(f"parent {i}: {c.name}", c.ok, c.detail, c.warning))
    if load_weights:
        if not report.ok:
            add(Check("load", None, "an earlier check failed"))
        else:
            try:  # the base as `peftlab generate/eval --adapter RECIPE` loads it (cli._load)
                from peftlab.recipe import load_recipe, representative

                files = representative(path, token=token)
                model, _ = load_model(base or recipe.base_model, **files.base_options())
                name = load_recipe(model, path, token=token)
                add(Check("load", True, f"loaded {base or recipe.base_model} and the recipe into it (as {name!r})"))
            except Exception as e:  # noqa: BLE001 - report whatever loading raises
                add(Check("load", False, f"{type(e).__name__}: {e}"))
    return report


def check(adapter_dir: str | os.PathLike, base: str | None = None) -> Report:
    """``diagnose``, raising ``peftlab.AdapterError`` with the failing checks when the report is not ok."""
    report = diagnose(adapter_dir, base)
    if not report.ok:
        width = max(len(c.name) for c in report.failures)
        raise AdapterError(
            f"adapter {report.adapter} failed the adapter doctor:\n"
            + "\n".join(f"  {c.line(width)}" for c in report.failures)
        )
    return report


def plugin_for(peft_type: str, data: dict) -> str | None:
    """The plugin distribution that loads a config of ``peft_type`` (``data``: its ``adapter_config.json``): an
    installed method's own declaration first, else ``KNOWN_PLUGINS``; ``None`` when peftlab knows none."""
    installed = [m for m in registry() if m.peft_type == peft_type and m.claims(data)]
    if installed:
        return installed[0].plugin
    known = KNOWN_PLUGINS.get(peft_type)
    return known(data) if callable(known) else known


# --- the checks -------------------------------------------------------------------------------------------------


def _pass(detail: str, warning: bool = False) -> tuple[bool, str, bool]:
    return True, detail, warning


def _fail(detail: str) -> tuple[bool, str, bool]:
    return False, detail, False


def _skip(detail: str) -> tuple[None, str, bool]:
    return None, detail, False


@dataclass
class _Base:
    """The base model checked against: what was asked for, where it loads from, the id adapters record, its config."""

    spec: str
    where: str
    id: str
    config: Any


@dataclass
class _Skeleton:
    """The base model built on the meta device, and what it looked like before an adapter went in."""

    model: torch.nn.Module
    task: str
    modules: dict[str, bool]  # path → is a linear layer
    params: dict[str, tuple[int, ...]]
    embeddings: dict[str, str]  # path → "input" / "output"


class _Doctor:
    """State shared by the checks; each method is one check and returns ``(ok, detail, warning)``."""

    def __init__(self, path: Path, base: str | None, load_weights: bool) -> None:
        self.path = adapter_in(path)
        self.base_arg = None if base is None else str(base)
        self.load_weights = load_weights
        self.header: dict[str, tuple[int, ...]] | None = None
        self.extra_header: dict[str, tuple[int, ...]] | None = None
        self.peft_cfg: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {}
        self.handle = None
        self.cfg = None
        self.base: _Base | None = None
        self.base_missing = "no base model (see base_model)"
        self.expected_fp: dict[str, Any] | None = None
        self._skeleton: _Skeleton | None = None
        self._skeleton_error: str | None = None

    # 1
    def files(self):
        if not self.path.is_dir():
            return _fail(f"adapter folder {self.path} does not exist")
        pickles = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
        problems = []
        if not (self.path / CONFIG_FILE).is_file():
            problems.append(f"{CONFIG_FILE} is missing")
        if not (self.path / WEIGHTS_FILE).is_file():
            if pickles:
                problems.append(
                    f"only pickle weights ({', '.join(pickles)}): refused, peftlab never unpickles (a pickle can run "
                    f"code); convert to {WEIGHTS_FILE} in a trusted environment "
                    f"(peft: model.save_pretrained(dir, safe_serialization=True))"
                )
            else:
                problems.append(f"{WEIGHTS_FILE} is missing")
        if problems:
            return _fail("; ".join(problems))
        if pickles:
            return _pass(
                f"{CONFIG_FILE} and {WEIGHTS_FILE} present; warning: {', '.join(pickles)} ignored "
                f"(peftlab never unpickles, it reads {WEIGHTS_FILE} only)",
                warning=True,
            )
        return _pass(f"{CONFIG_FILE} and {WEIGHTS_FILE} present, no pickle files")

    # 2
    def safetensors(self):
        file = self.path / WEIGHTS_FILE
        if not file.is_file():
            return _skip(f"no {WEIGHTS_FILE} to open")
        try:
            self.header = _header(file)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a corrupt file
            return _fail(f"{file}: corrupt or unreadable safetensors file ({type(e).__name__}: {e})")
        if not self.header:
            self.header = None
            return _fail(f"{file} holds no tensors")
        note = ""
        extra = self.path / EXTRA_FILE
        if extra.is_file():
            try:
                self.extra_header = _header(extra)
            except Exception as e:  # noqa: BLE001
                return _fail(f"{extra}: corrupt or unreadable safetensors file ({type(e).__name__}: {e})")
            note = f"; {EXTRA_FILE}: {len(self.extra_header)} tensors"
        return _pass(f"{WEIGHTS_FILE}: {len(self.header)} tensors, header read (no tensor loaded){note}")

    # 3
    def config(self):
        file = self.path / CONFIG_FILE
        if not file.is_file():
            return _skip(f"no {CONFIG_FILE}")
        data, problem = _read_json(file)
        if problem:
            return _fail(problem)
        if not data.get("peft_type"):
            return _fail(f"{file}: no peft_type")
        meta_file = self.path / META_FILE
        if meta_file.is_file():
            meta, problem = _read_json(meta_file)
            if problem:
                return _fail(problem)
            self.meta = meta
        self.peft_cfg = data
        detail = f"peft_type {data['peft_type']}, task_type {data.get('task_type') or 'unset (CAUSAL_LM)'}"
        if self.meta.get("method"):
            detail += f"; {META_FILE}: method {self.meta['method']}" + (
                f" from {self.meta['plugin']}" if self.meta.get("plugin") else ""
            )
        return _pass(detail)

    # 4
    def method(self):
        if self.peft_cfg is None:
            return _skip(f"{CONFIG_FILE} did not parse")
        peft_type = str(self.peft_cfg["peft_type"])
        reg = registry()
        wanted = self.meta.get("method")
        if wanted:
            handle = reg.methods.get(wanted)
            if handle is None:
                return _fail(f"method {wanted!r} ({META_FILE}) is not installed; {self._install_hint(peft_type)}")
        else:
            try:
                handle = reg.for_peft_type(peft_type, self.peft_cfg)
            except UnknownMethodError as e:
                return _fail(f"{e}; {self._install_hint(peft_type)}")
        if handle.peft_type != peft_type:
            return _fail(f"peft_type {peft_type!r} does not match method {handle.name!r} ({handle.peft_type})")
        self.handle = handle
        try:
            self.cfg = self._method_config()
        except (ConfigError, ValueError, TypeError) as e:
            return _fail(f"{handle.name} ({handle.plugin}) is installed but its config class refuses the config: {e}")
        return _pass(
            f"{handle.name} from {handle.plugin} loads peft_type {peft_type}; "
            f"{handle.config_class.__name__} accepts the config"
        )

    def _install_hint(self, peft_type: str) -> str:
        reg = registry()
        dist = self.meta.get("plugin") or plugin_for(peft_type, self.peft_cfg or {})
        if dist in reg.broken:
            return f"its plugin {dist} is installed but failed to load ({reg.broken[dist]})"
        if dist and dist in {m.plugin for m in reg}:
            return f"the installed plugin {dist} does not accept this config"
        if dist:
            return f"install its plugin: pip install {dist}"
        types = sorted({m.peft_type for m in reg})
        return f"no known peftlab plugin provides peft_type {peft_type!r} (installed methods load {types})"

    def _method_config(self):
        return self.handle.config_class.from_dict(dict(self.peft_cfg), source=str(self.path / CONFIG_FILE))

    # 5
    def base_model(self):
        if self.peft_cfg is None:
            return _skip(f"{CONFIG_FILE} did not parse")
        recorded = self.meta.get("base_model") or self.peft_cfg.get("base_model_name_or_path") or None
        spec = self.base_arg if self.base_arg is not None else recorded
        if not spec:
            self.base_missing = "the adapter records no base model and none was given"
            return _skip(f"{self.base_missing}; pass --base")
        given = self.base_arg is not None
        try:
            self.base = _resolve(spec)
        except PeftlabError as e:
            self.base_missing = f"base {spec!r} cannot be used: {e}"
            offline = hub_offline() and not Path(str(spec)).expanduser().exists()  # a Hub id this machine cannot get
            return (
                _fail(f"--base {spec}: {e}")
                if given and not offline
                else _skip(f"the base {spec!r} cannot be resolved here ({e}); pass --base with a local model folder")
            )
        except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, ... for what it cannot find
            self.base_missing = f"the config of base {spec!r} cannot be read here"
            return _skip(
                f"cannot read the config of base {spec!r} here (offline, or not a model: {_first_line(e)}); "
                f"pass --base with a local model folder"
            )
        actual = _fingerprint(self.base.config)
        recorded_fp = self.meta.get("base_fingerprint") or None
        same = not given or _same_model(self.base.id, recorded)
        expected, source = recorded_fp, f"recorded in {META_FILE}"
        if expected is None and same:
            expected, source = actual, "its config"
        elif expected is None and recorded:
            try:
                expected, source = _fingerprint(_resolve(recorded).config), f"the config of {recorded}"
            except Exception:  # noqa: BLE001 - the recorded base may be unreachable offline: nothing to compare
                expected = None
        self.expected_fp = expected
        diff = [
            f"{k}: adapter {v} vs base {actual[k]}"
            for k, v in (expected or {}).items()
            if k in actual and actual[k] != v
        ]
        if same:
            if diff:
                return _fail(
                    f"{self.base.id} is the base the adapter records, but its config changed since: " + "; ".join(diff)
                )
            checked = " (fingerprint matches)" if recorded_fp else ""
            return _pass(f"{self.base.id}: the base the adapter records{checked}")
        made_for = f"the adapter was made for {recorded or 'an unrecorded base'}"
        if expected is None:
            return _skip(
                f"{made_for}, whose config cannot be read here, and records no fingerprint of it; "
                f"the shape checks below decide whether {self.base.id} fits"
            )
        if diff:
            return _fail(f"{made_for}, {self.base.id} differs ({source} vs the base): " + "; ".join(diff))
        keys = ", ".join(k for k in FINGERPRINT_KEYS if k in expected and k in actual)
        return _pass(f"{made_for}, {self.base.id} has compatible shapes ({keys} agree)")

    # 6
    def vocab_and_hidden(self):
        if self.base is None:
            return _skip(self.base_missing)
        cfg = _text_config(self.base.config)
        base_vocab = _first(cfg, "vocab_size")
        base_hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        compared, diff = [], []

        def compare(what: str, adapter_value: Any, base_value: Any) -> None:
            if adapter_value is None or base_value is None:
                return
            compared.append(f"{what} {adapter_value}")
            if adapter_value != base_value:
                diff.append(f"{what}: adapter {adapter_value} vs base {base_value}")

        fp = self.expected_fp or {}
        compare("vocab_size", fp.get("vocab_size"), base_vocab)
        compare("hidden_size", fp.get("hidden_size"), base_hidden)
        token_dim = getattr(self.cfg, "token_dim", None) if self.cfg is not None else None
        if token_dim is not None and self.handle is not None:
            caps = self.handle.capabilities
            if caps.kv_cache:  # a KV prefix is as wide as one layer's keys: kv heads × head_dim
                width = KVGeometry.of(SimpleNamespace(config=self.base.config)).token_dim
                compare("token_dim (key/value width)", token_dim, width)
            elif caps.virtual_tokens:  # virtual tokens live in the input-embedding space
                skeleton = self.skeleton()
                width = base_hidden
                if skeleton is not None:
                    width = next(
                        (
                            s[1]
                            for p, s in skeleton.params.items()
                            if skeleton.embeddings.get(p.rsplit(".", 1)[0]) == "input" and len(s) == 2
                        ),
                        width,
                    )
                compare("token_dim (embedding width)", token_dim, width)
        skeleton = self.skeleton() if self.header else None
        if skeleton is not None:
            for key, param in self._head_tensors().items():
                shape, module = self.header[key], param.rsplit(".", 1)[0]
                if len(shape) != 2:
                    continue
                if module in skeleton.embeddings:  # a saved embedding or LM head: [vocab, hidden]
                    compare(f"{key} rows (vocab)", shape[0], base_vocab)
                    compare(f"{key} columns (hidden)", shape[1], base_hidden)
                else:  # a task head reads the last hidden state: [labels, hidden]
                    compare(f"{key} in_features (hidden)", shape[1], base_hidden)
        if diff:
            return _fail("; ".join(diff))
        if not compared:
            return _skip(
                "nothing to compare: the adapter records no fingerprint of its base and holds no embedding-sized value"
            )
        return _pass(f"agree with {self.base.id}: " + ", ".join(compared))

    # 7
    def targets(self):
        if self.cfg is None:
            return _skip("no installed method accepts the config (see method)")
        if not hasattr(self.cfg, "target_modules"):
            return _skip(f"{self.handle.name} does not select modules by name (no target_modules)")
        targets = self.cfg.target_modules
        if not targets:
            return _skip(f"target_modules is empty: {self.handle.name} picks its default modules (see shapes)")
        skeleton = self.skeleton()
        if skeleton is None:
            return _skip(self._skeleton_error or self.base_missing)
        paths = list(skeleton.modules)
        if targets == ALL_LINEAR:
            n = sum(skeleton.modules.values())
            return (
                _pass(f"all-linear: {n} linear layers in {self.base.id}")
                if n
                else _fail(f"all-linear: {self.base.id} has no linear layer")
            )
        if isinstance(targets, str):
            n = sum(target_matches(p, targets) for p in paths)
            return (
                _pass(f"the regex {targets!r} matches {n} modules of {self.base.id}")
                if n
                else _fail(f"the regex {targets!r} matches no module of {self.base.id}")
            )
        counts = {t: sum(target_matches(p, [t]) for p in paths) for t in targets}
        missing = [t for t, n in counts.items() if not n]
        if missing:
            linear = sorted({p.rsplit(".", 1)[-1] for p, lin in skeleton.modules.items() if lin})
            return _fail(f"target module(s) {missing} not in {self.base.id}; its linear layers: {linear}")
        return _pass(
            f"every target module exists in {self.base.id}: " + ", ".join(f"{t} ({n})" for t, n in counts.items())
        )

    # 8
    def shapes(self):
        if self.header is None:
            return _skip("the weights file was not read (see safetensors)")
        if self.cfg is None:
            return _skip("no installed method accepts the config (see method)")
        skeleton = self.skeleton()
        if skeleton is None:
            return _skip(self._skeleton_error or self.base_missing)
        try:
            expected = self._expected(skeleton.model)
            where = "built on the meta device"
        except PeftlabError as e:  # the method itself says the adapter cannot go onto this base
            return _fail(f"{self.handle.name} cannot be applied to {self.base.id}: {e}")
        except Exception as e:  # noqa: BLE001 - a method whose init needs real weights, say
            why = f"{self.handle.name} cannot be built on the meta device ({type(e).__name__}: {_first_line(e)})"
            if not self.load_weights:
                return _skip(f"{why}; run with load_weights=True (--load-weights) to check on the real model")
            try:
                model, _ = load_model(
                    self.base.spec,
                    task=skeleton.task,
                    num_labels=self._num_labels(),
                    method=self.handle,
                    method_config=self._method_config(),
                )
                expected = self._expected(model)
                where = "checked on the real base: the meta-device build failed"
            except Exception as e2:  # noqa: BLE001
                return _fail(f"{why}; on the real base: {type(e2).__name__}: {e2}")
        want = {k: tuple(v.shape) for k, v in expected.tensors.items()}
        heads = self._head_tensors()
        head_want = {k: skeleton.params[p] for k, p in heads.items() if p in skeleton.params}
        head_names = set(heads.values())
        missing_heads = [p for p in _head_params(skeleton, self.peft_cfg) if p not in head_names]
        problems = _compare(self.header, {**want, **head_want}, WEIGHTS_FILE, extra_ok=set(heads))
        if missing_heads:
            problems.append(f"task-head tensor(s) missing: {_few(missing_heads)}")
        unknown_heads = [k for k, p in heads.items() if p not in skeleton.params]
        if unknown_heads:
            problems.append(f"task-head tensor(s) with no place in the base: {_few(unknown_heads)}")
        if self.extra_header is not None and expected.extra:
            problems += _compare(self.extra_header, {k: tuple(v.shape) for k, v in expected.extra.items()}, EXTRA_FILE)
        if problems:
            return _fail(f"{self.handle.name} on {self.base.id}: " + "; ".join(problems))
        head_note = f" + {len(head_want)} task-head tensors" if head_want else ""
        return _pass(f"all {len(want)} {self.handle.name} tensors{head_note} fit {self.base.id} ({where})")

    # 9 (load_weights=True)
    def load(self):
        if self.cfg is None:
            return _skip("no installed method accepts the config (see method)")
        if self.base is None:
            return _skip(self.base_missing)
        task = (self.peft_cfg or {}).get("task_type") or "CAUSAL_LM"
        try:
            model, _ = load_model(
                self.base.spec,
                task=task,
                num_labels=self._num_labels(),
                method=self.handle,
                method_config=self._method_config(),
            )
            name = load_adapter(model, self.path)
        except Exception as e:  # noqa: BLE001 - report whatever loading raises
            return _fail(f"{type(e).__name__}: {e}")
        return _pass(f"loaded {self.base.id} and the adapter into it (as {name!r})")

    # --- helpers ----------------------------------------------------------------------------------------------

    def skeleton(self) -> _Skeleton | None:
        """The base model built from its config on the meta device (once); ``None`` with a reason when impossible."""
        if self._skeleton is not None or self._skeleton_error is not None:
            return self._skeleton
        if self.base is None:
            self._skeleton_error = self.base_missing
            return None
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        task = (self.peft_cfg or {}).get("task_type") or "CAUSAL_LM"
        cfg = copy.deepcopy(self.base.config)
        if task == "SEQ_CLS":
            cfg.num_labels = self._num_labels()
            cls = AutoModelForSequenceClassification
        elif task == "CAUSAL_LM":
            cls = AutoModelForCausalLM
        else:
            self._skeleton_error = f"task_type {task!r}: peftlab builds CAUSAL_LM and SEQ_CLS models only"
            return None
        try:
            with torch.device("meta"):
                model = cls.from_config(cfg)
        except Exception as e:  # noqa: BLE001 - an architecture transformers cannot build from its config
            self._skeleton_error = f"cannot build {self.base.id} from its config ({type(e).__name__}: {e})"
            return None
        model.peftlab_base_id = self.base.id
        model.peftlab_source = self.base.where
        # as load_model records them: a classifier's head is new (LoRA's all-linear skips it), a LM has none
        model.peftlab_new_modules = list(self.peft_cfg.get("modules_to_save") or []) if task == "SEQ_CLS" else []
        model.eval()
        embeddings = {}
        for kind, module in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
            for path, m in model.named_modules():
                if module is not None and m is module:
                    embeddings.setdefault(path, kind)
        self._skeleton = _Skeleton(
            model,
            task,
            modules={p: is_linear(m) for p, m in model.named_modules() if p},
            params={n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)},
            embeddings=embeddings,
        )
        return self._skeleton

    def _expected(self, model: torch.nn.Module):
        """What the method's ``save`` hook writes for this adapter's config on ``model``."""
        config = self._method_config()  # a fresh copy: inject fills model-derived fields in
        if getattr(config, "prompt_tuning_init", None) == "TEXT":
            # TEXT init tokenizes a text at save time (a tokenizer load, perhaps from the Hub); how the prompt
            # started does not change its shape, and the saved prompt replaces it on load anyway
            config.prompt_tuning_init = "RANDOM"
        add_adapter(model, self.handle, config, "default")
        return self.handle.hook("save")(model=model, config=config, adapter_name="default")

    def _head_tensors(self) -> dict[str, str]:
        """``{file key: base parameter}`` of the task-head tensors (``modules_to_save``), as ``load_adapter`` maps
        them."""
        heads = (self.peft_cfg or {}).get("modules_to_save") or []
        out = {}
        for key in self.header or {}:
            for prefix in HEAD_PREFIXES:
                name = key.removeprefix(prefix)
                if name != key and any(name.startswith(f"{h}.") for h in heads):
                    out[key] = name
                    break
        return out

    def _num_labels(self) -> int:
        """A classifier's label count, from its saved head (the rows of a 2-D head weight), else its config."""
        for key, param in self._head_tensors().items():
            shape = (self.header or {}).get(key, ())
            if param.endswith(".weight") and len(shape) == 2:
                return int(shape[0])
        return int((self.peft_cfg or {}).get("num_labels") or 2)


def _head_params(skeleton: _Skeleton, peft_cfg: dict) -> list[str]:
    """Base parameters of the task heads the adapter says it saved (``modules_to_save``)."""
    heads = peft_cfg.get("modules_to_save") or []
    return [p for p in skeleton.params if any(p.startswith(f"{h}.") for h in heads)]


def _compare(
    found: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], file: str, extra_ok: set[str] = frozenset()
) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches of ``found`` against ``want``, the first few named."""
    missing = sorted(set(want) - set(found))
    unexpected = sorted(set(found) - set(want) - set(extra_ok))
    wrong = [
        f"{k} is {list(found[k])}, expected {list(want[k])}"
        for k in sorted(want)
        if k in found and tuple(found[k]) != tuple(want[k])
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape in {file}: {_few(wrong)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from {file}: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in {file} the method does not make here: {_few(unexpected)}")
    return problems


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _header(file: Path) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` from a safetensors file's header; no tensor is read."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _read_json(file: Path) -> tuple[dict[str, Any], str | None]:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return {}, f"{file}: not valid JSON ({e})"
    if not isinstance(data, dict):
        return {}, f"{file}: expected a JSON object"
    return data, None


def _resolve(spec: str) -> _Base:
    """A base model's config without its weights: the SmolLM2 alias, a local folder or a Hub id (from the cache
    when offline). ``resolve_source`` is ``load_model``'s own resolution, so the doctor sees what a load would."""
    from transformers import AutoConfig

    where, model_id = resolve_source(spec)
    return _Base(spec, where, model_id, AutoConfig.from_pretrained(where))


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    try:
        return resolve_source(a)[1] == resolve_source(b)[1] or (
            Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve()
        )
    except Exception:  # noqa: BLE001 - an unresolvable id is simply not the same model
        return False


def _fingerprint(cfg: Any) -> dict[str, Any]:
    return fingerprint(SimpleNamespace(config=cfg))  # fingerprint() reads only model.config


def _text_config(cfg: Any) -> Any:
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _first(cfg: Any, *names: str) -> Any:
    return next((getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), None)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["CHECKS", "Check", "KNOWN_PLUGINS", "Report", "check", "diagnose", "plugin_for"]

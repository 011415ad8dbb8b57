"""Where rows come from: the built-in datasets, data files, saved datasets folders and Hub ids."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rows import DatasetError, normalize_rows

BUILTIN_DIR: Path = Path(__file__).resolve().parent.parent / "builtin_data"

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class BuiltinDataset:
    """A dataset shipped with peftlab in ``BUILTIN_DIR``."""

    name: str
    description: str
    path: Path
    task: str  # "CAUSAL_LM" or "SEQ_CLS"
    metric: str  # "exact_match" or "accuracy"


# name -> (file, task, metric, description); files are written by builtin_data/make_builtin.py
_BUILTINS: dict[str, tuple[str, str, str, str]] = {
    "capitals-json": (
        "capitals-json.jsonl",
        "CAUSAL_LM",
        "exact_match",
        (
            "Read a sentence about a country and reply with exactly "
            '{"country": ..., "capital": ...} (ignoring distractor cities); 450 rows, 50 eval '
            "rows on held-out countries."
        ),
    ),
    "iso-dates": (
        "iso-dates.jsonl",
        "CAUSAL_LM",
        "exact_match",
        (
            'Rewrite a date given in words ("March 5, 2021", "5th of Mar 2021", ...) as an '
            "ISO 8601 date (2021-03-05) and nothing else; 450 rows, 50 eval rows."
        ),
    ),
    "sentiment": (
        "sentiment.jsonl",
        "SEQ_CLS",
        "accuracy",
        ("Short product/service remarks labelled negative, neutral or positive; 360 rows, 45 eval rows."),
    ),
}


def builtin_datasets() -> dict[str, BuiltinDataset]:
    """Return the built-in datasets by name."""
    return {
        name: BuiltinDataset(name=name, description=desc, path=BUILTIN_DIR / file, task=task, metric=metric)
        for name, (file, task, metric, desc) in _BUILTINS.items()
    }


# ---------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------


def load_rows(source: str | os.PathLike) -> list[dict]:
    """Load, validate and normalise rows from a built-in name, a file, a saved folder or a Hub id."""
    text = os.fspath(source)
    builtins = builtin_datasets()
    if isinstance(source, str) and text in builtins:
        path = builtins[text].path
        return normalize_rows(*_read_file(path, str(path)))
    path = Path(text).expanduser()
    if path.is_dir():
        return normalize_rows(_read_saved_folder(path), text, "row")
    if path.is_file():
        return normalize_rows(*_read_file(path, text))
    if _looks_like_path(text):
        known = ", ".join(sorted(builtins)) or "none"
        raise DatasetError(f"{text}: no such file or folder (built-in datasets: {known})")
    return normalize_rows(_read_hub(text), f"Hub dataset {text!r}", "row")


def check_dataset(source: str | os.PathLike) -> list[dict] | None:
    """Read and check a local dataset file or folder now, so a bad one is refused before anything else starts
    (``DatasetError`` naming the file and line), and return its rows; built-in datasets are known good and Hub
    ones are read when used (``None``)."""
    text = os.fspath(source)
    if isinstance(source, str) and text in builtin_datasets():
        return None
    if Path(text).expanduser().exists() or _looks_like_path(text):
        return load_rows(source)
    return None


def _looks_like_path(text: str) -> bool:
    """True when ``text`` is clearly meant as a local path (so the Hub is not tried)."""
    return (
        not text.strip()
        or text.lower().endswith(DATA_SUFFIXES)
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
    )


def _read_file(path: Path, name: str) -> tuple[list[tuple[int, Any]], str, str]:
    """Return ``(numbered raw rows, name, "line" or "row")`` for a data file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, name), name, "line"
    if suffix == ".json":
        return _read_json(path, name)
    if suffix == ".csv":
        return _read_csv(path, name), name, "row"
    if suffix == ".parquet":
        return _read_parquet(path, name), name, "row"
    raise DatasetError(f"{name}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json, .csv or .parquet")


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_jsonl(path: Path, name: str) -> list[tuple[int, Any]]:
    out = []
    for lineno, line in enumerate(_read_text(path, name).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    return out


def _read_json(path: Path, name: str) -> tuple[list[tuple[int, Any]], str, str]:
    text = _read_text(path, name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # really JSON Lines with a .json suffix
            return _read_jsonl(path, name), name, "line"
        raise DatasetError(f"{name} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, dict):
        for key in ("train", "data", "rows"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise DatasetError(f"{name}: expected a JSON array of row objects (or an object with a 'train' list)")
    if not isinstance(data, list):
        raise DatasetError(f"{name}: expected a JSON array of row objects, got {type(data).__name__}")
    return list(enumerate(data, start=1)), name, "row"


def _read_csv(path: Path, name: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(_read_text(path, name), newline=""))
    if not reader.fieldnames:
        raise DatasetError(f"{name}: empty CSV file (no header row)")
    out = []
    try:
        for rowno, row in enumerate(reader, start=1):
            if None in row:
                raise DatasetError(f"{name} row {rowno}: more fields than the header has columns")
            out.append((rowno, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        raise DatasetError(f"{name}: malformed CSV ({exc})") from exc
    return out


def _read_parquet(path: Path, name: str) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DatasetError(f"{name}: cannot read Parquet file ({exc})") from exc
    return list(enumerate(rows, start=1))


def _read_saved_folder(path: Path) -> list[tuple[int, Any]]:
    markers = ("dataset_dict.json", "state.json", "dataset_info.json")
    if not any((path / m).exists() for m in markers):
        raise DatasetError(f"{path}: folder is not a dataset saved with datasets' save_to_disk")
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: cannot load saved dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DatasetError(f"{path}: saved DatasetDict has no 'train' split (found: {', '.join(ds)})")
        ds = ds["train"]
    return list(enumerate(ds.to_list(), start=1))


def _read_hub(repo_id: str) -> list[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split="train")
    except Exception as exc:
        raise DatasetError(
            f"{repo_id!r} is not a built-in dataset or an existing file, and loading it from the "
            f"Hugging Face Hub failed (the Hub may be unreachable, or the id is wrong): {exc}"
        ) from exc
    return list(enumerate(ds.to_list(), start=1))

"""Datasets for training and evaluation: read, normalise, render, tokenise and collate rows.

One module a job: ``sources`` (built-ins, files, saved folders, Hub ids), ``rows`` (the three row
kinds, validation, splits), ``templates`` (chat templates), ``encode`` (tokenising with loss labels)
and ``collate`` (padding or packing a batch). The names below are the public ones.
"""

from .collate import collate, length_grouped, loss_positions, pack
from .encode import encode_rows
from .rows import DatasetError, dataset_task, label_names, normalize_rows, prompt_and_reference, split_rows
from .sources import BUILTIN_DIR, BuiltinDataset, builtin_datasets, check_dataset, load_rows
from .templates import prompt_text

__all__ = [
    "BUILTIN_DIR",
    "BuiltinDataset",
    "DatasetError",
    "builtin_datasets",
    "check_dataset",
    "collate",
    "dataset_task",
    "encode_rows",
    "label_names",
    "length_grouped",
    "load_rows",
    "loss_positions",
    "normalize_rows",
    "pack",
    "prompt_and_reference",
    "prompt_text",
    "split_rows",
]

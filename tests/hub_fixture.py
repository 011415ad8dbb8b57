"""pytest fixtures for the local Hub server (``tests/hub_server.py``): ``hub`` and ``hub_env``.

A plugin module, so tests anywhere (``tests/``, ``hub/``, ``plugins/``) can use it: register it in the root
``conftest.py`` with ``pytest_plugins = ["tests.hub_fixture"]`` (that import needs the repo root on ``sys.path``:
``python -m pytest`` from the root, as ``./dev test`` runs it, or ``pythonpath = ["."]`` in the pytest settings), or
in a test module under ``tests/`` with the same line (pytest registers a plugin once).

- ``hub`` (session): a running :class:`HubServer` on 127.0.0.1 with the test identities of ``tests/hub_server.py``
  (``TOKENS``: alice's write and read tokens, bob's write token; ``ORGS``: alice is in peftlab-org). Its repos persist.
- ``hub_env`` (function): the same server with its repos wiped, and ``huggingface_hub`` pointed at it for the test:
  ``HF_ENDPOINT``, ``HF_TOKEN`` (= ``WRITE_TOKEN``), ``HF_HUB_DISABLE_XET=1``, a per-test ``HF_HOME`` (so the download
  cache is fresh), ``HF_HUB_OFFLINE`` unset (the root conftest and .ci/run set it), and the ``huggingface_hub``
  constants that were read from the environment at import time patched to match, as are the ``HfApi`` instances
  cached at import (``huggingface_hub.hf_api.api``, transformers' shared one). Yields the server.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.hub_server import ORGS, TOKENS, WRITE_TOKEN, HubServer


@pytest.fixture(scope="session")
def hub():
    server = HubServer(tokens=TOKENS, orgs=ORGS).start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(hub, monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    hub.reset()
    home = tmp_path / "hf_home"
    cache = str(home / "hub")
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), os.environ.get("no_proxy"), "127.0.0.1"]))
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": cache,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HF_TOKEN_PATH",
        "HF_XET_CACHE",
    ):
        monkeypatch.delenv(key, raising=False)

    # huggingface_hub reads these once, at import
    patched = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "default_cache_path": cache,
        "HUGGINGFACE_HUB_CACHE": cache,
        "HF_HUB_CACHE": cache,
        "default_assets_cache_path": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_XET_CACHE": str(home / "xet"),
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    for module, name in (
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE"),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE"),
    ):
        if module in sys.modules and hasattr(sys.modules[module], name):
            monkeypatch.setattr(sys.modules[module], name, patched[name])
    # HfApi instances made at import keep the endpoint they saw then
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "_whoami_cache", {})
    if "transformers.utils.hub" in sys.modules and hasattr(sys.modules["transformers.utils.hub"], "_hf_api"):
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
    # the shared HTTP client was made (proxies and all) under the old environment: start a new one, and again after
    huggingface_hub.close_session()
    yield hub
    huggingface_hub.close_session()
    if "transformers.utils.hub" in sys.modules:  # made during the test, for this endpoint
        sys.modules["transformers.utils.hub"]._hf_api = None


# --- a tiny base model on the server and an adapter of it, shared by the hub tests ---------------------------

BASE = "alice/tiny-llama"


def train_tiny(run: Path, tiny_dir: Path, base: str = BASE) -> Path:
    """A LoRA adapter trained for 3 steps on the tiny llama into the run folder ``run`` (as a job of the app would),
    recording ``base`` (a Hub id, so its card tags it and search finds it) as its base model."""
    from peftlab.train import TrainArgs, train

    train(
        TrainArgs(
            method="lora",
            base_model=str(tiny_dir),
            dataset="capitals-json",
            output_dir=str(run),
            max_steps=3,
            batch_size=4,
            max_length=64,
            max_eval_samples=8,
            learning_rate=1e-2,
            device="cpu",
        )
    )
    folder = run / "adapter"
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("peftlab.json", "base_model")):
        data = json.loads((folder / name).read_text())
        data[key] = base
        (folder / name).write_text(json.dumps(data))
    return folder


def serve_base(hub, tiny_dir: Path) -> None:
    """Put the tiny base model on the Hub server as ``BASE`` (the doctor and the chat load it from there)."""
    hub.add_repo(BASE, {p.name: p.read_bytes() for p in Path(tiny_dir).iterdir() if p.is_file()})

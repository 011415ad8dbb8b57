"""Start-up: ``peftlab --help``, an unknown command, an argument error and ``peftlab methods`` answer without
importing what they do not use. The test checks the import graph (``sys.modules``), never a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "gradio", "huggingface_hub", "accelerate", "datasets", "safetensors")

# runs the CLI in-process, then prints which heavy top-level packages got imported and the exit status
PROBE = """
import json, sys
from peftlab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def _imports(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return json.loads(out.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv,code",
    [
        (["--help"], 0),
        ([], 2),  # no command: usage and an error
        (["nonsense"], 2),  # unknown command
        (["push", "--help"], 0),  # a hub command's help (the hub distribution adds it)
    ],
)
def test_help_and_argument_errors_import_no_heavy_library(argv, code):
    got = _imports(*argv)
    assert got == {"code": code, "loaded": []}


def test_methods_import_only_what_the_plugins_need():
    got = _imports("methods", "--json")
    assert got["code"] == 0
    # the plugins' modules import torch (their layers) and the kit transformers' cache classes (which bring
    # huggingface_hub and safetensors); the web app's gradio and training's datasets/accelerate stay out
    assert {"torch", "transformers"} <= set(got["loaded"])
    assert not {"gradio", "accelerate", "datasets"} & set(got["loaded"])


def test_lazy_public_api_is_the_same_api():
    """``peftlab``'s names load on first use: every name of ``__all__`` resolves, to what its module defines."""
    code = """
import sys, peftlab
assert "torch" not in sys.modules, "import peftlab loaded torch"
from peftlab import hookimpl, PeftlabError
assert "torch" not in sys.modules, "the plugin decorator and the errors loaded torch"
from peftlab import adapters, state
assert peftlab.__all__ == sorted(peftlab._WHERE)
for name in peftlab.__all__:
    value = getattr(peftlab, name)
    module = sys.modules["peftlab." + peftlab._WHERE[name]]
    assert value is getattr(module, name), name
assert peftlab.add_adapter is adapters.add_adapter and peftlab.mixed_batch is state.mixed_batch
assert peftlab.train.__name__ == "peftlab.train"  # submodules too
try:
    peftlab.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("no AttributeError")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

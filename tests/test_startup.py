"""Start-up: ``peftlab --help``, an unknown command, an argument error, ``peftlab methods`` and the commands' ``--help``
answer without importing what they do not use (``methods`` and the flags come from the catalog, ``peftlab.catalog``).
The tests check the import graph (``sys.modules``) and the output, never a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

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


def _probe(*argv: str, env: dict | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the CLI in a fresh process: (exit status and heavy packages imported, the process's output)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stderr.strip().splitlines()[-1]), out


def _imports(*argv: str) -> dict:
    return _probe(*argv, env={"PEFTLAB_CATALOG": "off"})[0]  # these never read the catalog


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


# --- the catalog: methods and --help without the plugins ------------------------------------------------------

CATALOG_COMMANDS = [
    ("methods",),
    ("methods", "--json"),
    ("train", "--help"),
    ("train", "--method", "prompt_tuning", "--help"),
    ("eval", "--help"),
    ("generate", "--help"),
    ("train", "--max-steps"),  # an argument error: its usage and message on stderr
]

# each command in one process with the plugins loaded (no catalog): {argv joined by spaces: what it printed}
LIVE = """
import contextlib, io, json, sys
from peftlab.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out[" ".join(argv)] = [code, buf.getvalue(), err.getvalue()]
print(json.dumps(out))
"""


def _live(*commands: tuple[str, ...], env: dict | None = None) -> dict[str, str]:
    env = {**os.environ, **(env or {}), "PEFTLAB_CATALOG": "off"}
    argvs = json.dumps([list(c) for c in commands])
    out = subprocess.run([sys.executable, "-c", LIVE, argvs], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def live_output():
    """What the catalog commands print with the plugins loaded: {argv: [exit status, stdout, stderr]}."""
    return _live(*CATALOG_COMMANDS)


@pytest.fixture(scope="module")
def warm_catalog(tmp_path_factory):
    """A catalog folder (never the user's cache) filled by one ``peftlab methods`` that loaded the plugins."""
    env = {"PEFTLAB_CATALOG": str(tmp_path_factory.mktemp("catalog"))}
    got, _ = _probe("methods", env=env)
    assert got["code"] == 0
    # building it loads the plugins: they import torch (their layers) and the kit transformers' cache classes
    # (which bring huggingface_hub and safetensors); the web app's gradio and training's datasets/accelerate stay out
    assert {"torch", "transformers"} <= set(got["loaded"])
    assert not {"gradio", "accelerate", "datasets"} & set(got["loaded"])
    assert len(list(Path(env["PEFTLAB_CATALOG"]).glob("*.json"))) == 1
    return env


@pytest.mark.parametrize("argv", CATALOG_COMMANDS, ids=" ".join)
def test_catalog_commands_import_no_heavy_library_and_print_what_the_plugins_say(argv, warm_catalog, live_output):
    got, out = _probe(*argv, env=warm_catalog)
    code, stdout, stderr = live_output[" ".join(argv)]
    assert got == {"code": code, "loaded": []}
    assert out.stdout == stdout
    if code:  # an argument error's usage and message (then the probe's line)
        assert stderr.startswith("usage: peftlab train") and out.stderr.startswith(stderr)


def _plugin_site(tmp_path: Path) -> tuple[Path, Path]:
    """The third-party test plugin's package in a folder for PYTHONPATH, and the dist-info that installs it (an entry
    point in group ``peftlab``), written by hand: removing or adding that folder uninstalls or installs the plugin."""
    site = tmp_path / "site"
    shutil.copytree(HERE / "thirdparty_plugin" / "peftlab_scale", site / "peftlab_scale")
    info = site / "peftlab_scale-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: peftlab-scale\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[peftlab]\nscale = peftlab_scale\n")
    return site, info


def _methods(env: dict) -> tuple[bool, dict]:
    """``peftlab methods --json``: (whether it loaded the plugins, {method: its declarations})."""
    got, out = _probe("methods", "--json", env=env)
    assert got["code"] == 0, out.stderr[-2000:]
    return "torch" in got["loaded"], {m["name"]: m for m in json.loads(out.stdout)}


def test_catalog_follows_installs_uninstalls_and_edited_plugin_files(tmp_path):
    site, info = _plugin_site(tmp_path)
    stash = tmp_path / info.name
    info.rename(stash)  # the package is there, its entry point is not: not installed
    env = {"PEFTLAB_CATALOG": str(tmp_path / "catalog"), "PYTHONPATH": str(site)}
    loaded, found = _methods(env)
    assert loaded and "scale" not in found and "lora" in found

    stash.rename(info)  # installed: a new entry point
    loaded, found = _methods(env)
    assert loaded, "a new entry point rebuilds the catalog"
    assert found["scale"]["description"] == "Learned per-channel output scale (a third-party example)"
    assert _methods(env) == (False, found)  # cached again

    module = site / "peftlab_scale" / "__init__.py"  # an editable install's file changes, its version does not
    module.write_text(module.read_text().replace("(a third-party example)", "(edited in place)"))
    loaded, found = _methods(env)
    assert loaded and found["scale"]["description"] == "Learned per-channel output scale (edited in place)"

    shutil.rmtree(info)  # uninstalled
    loaded, found = _methods(env)
    assert loaded and "scale" not in found and "lora" in found


def test_a_plugin_that_fails_to_load_is_reported_and_never_cached(tmp_path):
    site, info = _plugin_site(tmp_path)
    (site / "peftlab_scale" / "__init__.py").write_text("raise ImportError('needs the scale extra')\n")
    env = {"PEFTLAB_CATALOG": str(tmp_path / "catalog"), "PYTHONPATH": str(site)}
    got, out = _probe("methods", env=env)
    assert got["code"] == 0 and "lora" in out.stdout
    assert "(plugin peftlab-scale failed to load: ImportError: needs the scale extra)" in out.stderr
    assert not (tmp_path / "catalog").exists(), "a catalog without the broken plugin would hide its failure"


def test_a_corrupt_catalog_is_rebuilt(tmp_path, live_output):
    env = {"PEFTLAB_CATALOG": str(tmp_path / "catalog")}
    where = subprocess.run(
        [sys.executable, "-c", "from peftlab.catalog import location; print(location())"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    path = Path(where.stdout.strip())
    path.parent.mkdir()
    path.write_text('{"format": 1, "fingerprint": "')  # a write cut short (by hand: catalog writes are atomic)
    got, out = _probe("methods", "--json", env=env)
    assert got["code"] == 0 and "torch" in got["loaded"], "rebuilt from the plugins"
    assert out.stdout == live_output["methods --json"][1]
    assert json.loads(path.read_text())["methods"] == json.loads(out.stdout)  # and written whole
    assert _probe("methods", "--json", env=env)[0] == {"code": 0, "loaded": []}


def test_an_unwritable_catalog_folder_is_not_an_error(tmp_path, live_output):
    (tmp_path / "file").write_text("")  # a folder that cannot be made (root may write anywhere else)
    got, out = _probe("methods", env={"PEFTLAB_CATALOG": str(tmp_path / "file" / "catalog")})
    assert got["code"] == 0 and out.stdout == live_output["methods"][1]


POISON = """
import contextlib, io, json, sys
from peftlab import catalog
from peftlab.cli import main

# a catalog that matches the installed plugins but lists a flag lora does not have
c = catalog.build()
c.fields["lora"].append({**c.fields["lora"][0], "name": "bogus", "help": "not a lora option", "flag": ""})
catalog._write(catalog.location(), c, catalog.fingerprint())

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue() + err.getvalue()

print(json.dumps([run("train", "--method", "lora", "--help"), run("train", "--method", "lora", "--bogus", "1")]))
"""


def test_a_command_that_runs_reads_its_arguments_from_the_plugins_not_the_catalog(tmp_path):
    env = {**os.environ, "PEFTLAB_CATALOG": str(tmp_path / "catalog")}
    out = subprocess.run([sys.executable, "-c", POISON], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    (help_code, help_text), (code, text) = json.loads(out.stdout)
    assert help_code == 0 and "--bogus" in help_text  # --help shows what the catalog says
    assert code == 2 and "unrecognized arguments: --bogus 1" in text  # but train parses with lora's own fields


STALE = """
import contextlib, io, json, sys
from peftlab import catalog
from peftlab.cli import main

# a stale catalog: it matches the fingerprint but lacks a flag lora has (a change the fingerprint missed)
c = catalog.build()
c.fields["lora"] = [f for f in c.fields["lora"] if f["name"] != "lora_alpha"]
catalog._write(catalog.location(), c, catalog.fingerprint())

out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(["train", "--method", "lora", "--lora-alpha", "8", "--dataset", *sys.argv[1:]])
    except SystemExit as e:
        code = e.code
print(json.dumps([code, out.getvalue() + err.getvalue(), catalog.location().exists()]))
"""


def test_a_flag_a_stale_catalog_does_not_know_is_read_by_the_plugins_and_the_catalog_rebuilt(tmp_path):
    env = {**os.environ, "PEFTLAB_CATALOG": str(tmp_path / "catalog")}
    missing = tmp_path / "missing.jsonl"
    argv = [sys.executable, "-c", STALE, str(missing), "--output", str(tmp_path / "run")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    code, text, catalog_kept = json.loads(out.stdout)
    assert "unrecognized arguments" not in text and "--lora-alpha" not in text, text
    assert code == 2 and "missing.jsonl" in text, text  # parsed by lora's own fields: the run got to the dataset
    assert not catalog_kept, "a catalog found stale is removed (the next call rebuilds it)"


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

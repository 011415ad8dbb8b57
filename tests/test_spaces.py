"""The Space folder: a valid card header, and a build that carries everything its requirements name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_space_card_header_is_valid_for_a_gradio_space():
    text = (ROOT / "spaces" / "README.md").read_text()
    assert text.startswith("---\n")
    header = dict(line.split(": ", 1) for line in text.split("---\n")[1].strip().splitlines())
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert (ROOT / "spaces" / header["app_file"]).exists()


def test_space_build_carries_every_requirement(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "spaces" / "build.py"), str(tmp_path / "space")],
        capture_output=True,
        text=True,
        check=True,
    )
    space = Path(out.stdout.strip())
    reqs = (space / "requirements.txt").read_text().split()
    assert "./core[app]" in reqs and "./plugins/lora" in reqs
    for req in reqs:
        folder = space / req.split("[")[0]
        assert (folder / "pyproject.toml").exists(), f"{req} is not in the built Space"
    assert not list(space.rglob("tests")), "tests are not deployed"
    spec = importlib.util.spec_from_file_location("space_app", space / "app.py")
    assert spec is not None and "peftlab.webui" in (space / "app.py").read_text()

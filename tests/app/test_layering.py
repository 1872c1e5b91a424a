"""The layer rules of pyproject.toml hold (import-linter): app is the ground floor, the pipeline and the
simulator never import each other, no cycles between sibling modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(LINT_IMPORTS), "--no-cache", *(["--config", str(config)] if config else [])]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept():
    done = _lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_checker_reports_a_broken_layer(tmp_path):
    """Not vacuous: the same checker on this code base, with the two floors swapped, reports the pipeline's
    imports of `app` as broken (so a real `app` → `auto_deployment` import would be reported too)."""
    config = tmp_path / "importlinter.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    app\n    auto_deployment\n"
        "[importlinter:contract:layers]\nname = swapped floors\ntype = layers\n"
        "layers =\n    app\n    auto_deployment\n"
    )
    done = _lint(config)
    assert done.returncode != 0
    assert "swapped floors BROKEN" in done.stdout

"""The serving image holds `app/` only: nothing in it may import `auto_deployment` or the simulator."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def test_app_never_imports_auto_deployment_or_the_simulator():
    offenders = []
    for path in sorted(APP.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"auto_deployment", "simulator"}]
    assert offenders == []
    assert len(list(APP.glob("*.py"))) >= 8  # the scan saw the package

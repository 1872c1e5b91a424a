"""The lean inference image installs what `app/` imports, and nothing else decides it.

`docker/requirements-inference.txt` is the serving image's package list, kept apart from requirements.txt so
the image holds no training code. A third-party import added to `app/` and forgotten there passes every native
test and breaks only the compose stack (it did: orjson in provenance left every slot container unhealthy).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INFERENCE_REQUIREMENTS = ROOT / "docker" / "requirements-inference.txt"
# Import name → the distribution in the list that brings it (its own, or the one that depends on it).
DISTRIBUTION = {"prometheus_client": "prometheus-client", "prometheus_flask_exporter": "prometheus-flask-exporter",
                "werkzeug": "flask"}
# Modules of app/ the server never loads: training (Surprise, the sparse fit's progress bar).
TRAINING_ONLY = {"fit_knn.py", "fit_sparse_knn.py"}


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _requirements(path: Path) -> set[str]:
    wanted = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            wanted.add(line.split("==")[0].split(">=")[0].strip().lower())
    return wanted


def test_every_third_party_package_app_imports_is_in_the_inference_image():
    served = [p for p in (ROOT / "app").rglob("*.py") if p.name not in TRAINING_ONLY]
    imported = set().union(*(_top_level_imports(p) for p in served))
    third_party = {name for name in imported
                   if name not in sys.stdlib_module_names and name not in {"app", "__future__"}}
    needed = {DISTRIBUTION.get(name, name).lower() for name in third_party}
    assert needed - _requirements(INFERENCE_REQUIREMENTS) == set()


def test_the_check_sees_a_missing_package(tmp_path: Path):
    trimmed = tmp_path / "requirements-inference.txt"
    trimmed.write_text("".join(line + "\n" for line in INFERENCE_REQUIREMENTS.read_text().splitlines()
                               if line.strip() != "orjson"))
    assert "orjson" in _requirements(INFERENCE_REQUIREMENTS) - _requirements(trimmed)

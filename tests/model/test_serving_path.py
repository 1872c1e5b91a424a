"""Training code stays out of the serving import path: a server process never imports Surprise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEGACY = Path(__file__).parent / "legacy_bundle"
TRAINING = ("surprise", "app.recommender.fit_knn")


def _imported_after(code: str) -> list[str]:
    """Training modules in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith({TRAINING!r}))))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_server_and_the_slot_does_not_import_surprise():
    assert _imported_after("import app.server, app.slot, app.model") == []


def test_loading_and_serving_a_bundle_does_not_import_surprise():
    code = (
        "from app.model import Recommender\n"
        f"m = Recommender.load({str(LEGACY)!r})\n"
        "assert len(m.recommend(2)) == 20 and len(m.recommend(10**9)) == 20 and m.fallback()\n"
        "m.predict(2, 'plain+movie+10+2001')"
    )
    assert _imported_after(code) == []


def test_training_imports_its_adapter_when_asked():
    """The probe itself works: training does pull the adapter in."""
    code = (
        "from app.model import Recommender\n"
        "from tests.model.conftest import build_catalogue\n"
        "Recommender.train(*build_catalogue(), materialise=False)"
    )
    assert "surprise" in _imported_after(code)

"""Issue 12, integrity of models: a slot serves a bundle only if its checksum is the one `tracking` recorded.

`bundle.verify` only proves the files match the bundle's own ``checksums.json``; an altered and re-hashed
bundle passes it. These tests alter a bundle, rewrite its checksums so it verifies, and check the slot
refuses it because ``tracking.model_checksum`` of its version still holds the original (policy: `app.slot`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app import store
from app.contracts import bundle
from app.model import Recommender
from app.settings import MySQL
from tests.fixtures.mariadb import settings_env
from tests.fixtures.ports import free_port


@pytest.fixture
def integrity_root(private_root) -> Path:
    """Versions 1 and 2, and 3 (a copy of 2 saved as version 3)."""
    root = private_root
    model = Recommender.load(root / "2")
    model.metadata["version"] = 3
    model.save(root / "3")
    return root


def track(settings: MySQL, root: Path, version: int) -> str:
    """Record `version`'s tracking row with the checksum its bundle has now; returns it."""
    checksum = bundle.checksum(root / str(version))
    store.record_tracking(settings, {"version_number": version, "model_checksum": checksum})
    return checksum


def alter_and_rehash(directory: Path) -> None:
    """Change a value inside similarity.npy and rewrite checksums.json to match: `bundle.verify` still passes."""
    path = directory / "similarity.npy"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01  # a byte of the last float, past the .npy header: the file still loads
    path.write_bytes(bytes(data))
    bundle.write_checksums(directory, bundle.listed_files(directory))
    bundle.verify(directory)


def refused(server) -> dict[str, float]:
    """`model_load_refused_total` of the slot by its `serving` label, summed over the workers."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "model_load_refused_total":
                counts[sample.labels["serving"]] = counts.get(sample.labels["serving"], 0) + sample.value
    return counts


def server_env(settings: MySQL, **extra: str) -> dict[str, str]:
    return {**settings_env(settings), "MOVIEREC_PROVENANCE": "0", **extra}


def test_tracked_model_checksum_is_read_by_the_app_account(mysql_settings: MySQL) -> None:
    assert store.tracked_model_checksum(mysql_settings, 9) is None
    store.record_tracking(mysql_settings, {"version_number": 9, "model_rmse": 0.9})
    assert store.tracked_model_checksum(mysql_settings, 9) is None  # a row without a model checksum
    store.record_tracking(mysql_settings, {"version_number": 9, "model_checksum": "ab" * 32})
    assert store.tracked_model_checksum(mysql_settings, 9) == "ab" * 32


def test_rehashed_bundle_is_refused_and_the_current_version_keeps_serving(
    start_server, mysql_settings: MySQL, integrity_root: Path
) -> None:
    track(mysql_settings, integrity_root, 1)
    original = track(mysql_settings, integrity_root, 3)
    pristine = shutil.copytree(integrity_root / "3", integrity_root.parent / "pristine-3")
    alter_and_rehash(integrity_root / "3")
    assert bundle.checksum(integrity_root / "3") != original
    s = start_server(models_root=integrity_root, workers=2, extra_env=server_env(mysql_settings))
    mark = s.log_size()
    s.set_pointer(3)
    s.wait_log(r"model reload refused.*serving=1 .*tracking records " + original + " for version 3", 2, since=mark)
    ready = s.get("/ready")
    assert ready.status_code == 200 and "version=1" in ready.text
    counts = refused(s)  # counted, so an alert can say what the log says
    assert counts["yes"] >= 1 and counts["no"] == 0
    assert {s.get(f"/recommend/{u}").headers["X-Model-Version"] for u in range(1, 20)} == {"1"}
    # the original bytes (checksum as tracked) are served
    mark = s.log_size()
    shutil.rmtree(integrity_root / "3")
    shutil.copytree(pristine, integrity_root / "3")
    s.wait_workers_on(3, since=mark)
    assert s.get("/recommend/5").headers["X-Model-Version"] == "3"


def test_rehashed_bundle_at_start_leaves_the_slot_unready_with_the_reason(
    start_server, mysql_settings: MySQL, integrity_root: Path
) -> None:
    original = track(mysql_settings, integrity_root, 3)
    alter_and_rehash(integrity_root / "3")
    s = start_server(models_root=integrity_root, version=3, workers=1, wait="health",
                     extra_env=server_env(mysql_settings))
    ready = s.get("/ready")
    assert ready.status_code == 503 and f"tracking records {original}" in ready.text
    assert s.get("/recommend/5").status_code == 503
    assert refused(s)["no"] >= 1


def test_bundle_matching_its_tracking_row_is_served(start_server, mysql_settings: MySQL, integrity_root: Path) -> None:
    track(mysql_settings, integrity_root, 3)
    s = start_server(models_root=integrity_root, version=3, workers=1, extra_env=server_env(mysql_settings))
    assert s.get("/recommend/5").headers["X-Model-Version"] == "3"
    assert "model not verified against tracking" not in s.log()


def test_no_tracking_row_is_served_and_logged_unverified(
    start_server, mysql_settings: MySQL, integrity_root: Path
) -> None:
    alter_and_rehash(integrity_root / "3")  # nothing to compare with: served on its own checksums
    s = start_server(models_root=integrity_root, version=3, workers=1, extra_env=server_env(mysql_settings))
    assert s.get("/recommend/5").headers["X-Model-Version"] == "3"
    s.wait_log(r"model not verified against tracking.*version 3 has no tracking row", 1)


def test_mysql_unreachable_still_serves_and_logs_it(start_server, mysql_settings: MySQL, integrity_root: Path) -> None:
    down = MySQL(**{**mysql_settings.__dict__, "port": free_port()})
    s = start_server(models_root=integrity_root, version=3, workers=1, extra_env=server_env(down))
    assert s.get("/recommend/5").headers["X-Model-Version"] == "3"
    s.wait_log(r"model not verified against tracking.*MySQL did not answer", 1)


def test_verification_can_be_switched_off(start_server, mysql_settings: MySQL, integrity_root: Path) -> None:
    track(mysql_settings, integrity_root, 3)
    alter_and_rehash(integrity_root / "3")
    s = start_server(models_root=integrity_root, version=3, workers=1,
                     extra_env=server_env(mysql_settings, MOVIEREC_VERIFY_TRACKING="0"))
    assert s.get("/recommend/5").headers["X-Model-Version"] == "3"

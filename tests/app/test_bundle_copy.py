"""Issue 12, integrity of models: a slot serves from a private read-only copy, never from the model store.

Before the fix a worker memory-mapped ``similarity.npy`` in the store itself: truncating it killed the
worker with SIGBUS and rewriting it in place changed the model it served. These tests damage the store
under a running server and check that nothing it serves changes and no worker dies; then check the
copy itself (shared by the workers, read-only, made only from matching bytes, removed once unused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app import slot as slot_module
from app.contracts import bundle
from app.model import BundleError
from app.settings import MySQL, Paths, Serving
from app.slot import ModelSlot

USERS = range(1, 41)
NO_TRACKING = {"MOVIEREC_VERIFY_TRACKING": "0"}


def lists(server) -> dict[int, list[str]]:
    out = {}
    for user in USERS:
        r = server.get(f"/recommend/{user}")
        assert r.status_code == 200, r.text
        out[user] = r.text.split(",")
    return out


def copies(run_dir: Path, slot: str) -> list[Path]:
    return sorted(p for p in (run_dir / "bundles" / slot).iterdir())


def mapped_files(pid: int) -> set[str]:
    return {line.split(maxsplit=5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


def test_truncating_and_rewriting_the_store_changes_nothing_served(start_server, private_root: Path) -> None:
    s = start_server(models_root=private_root, workers=2, extra_env=NO_TRACKING)
    before = lists(s)
    workers = sorted(s.worker_pids())
    checksum = s.get("/version").json()["model_checksum"]
    assert checksum == bundle.checksum(private_root / "1")
    [copy] = copies(s.run_dir, s.slot)
    assert copy.name == checksum
    for pid in workers:  # both workers map the one copy, not the store
        maps = mapped_files(pid)
        assert str(copy / "similarity.npy") in maps
        assert not any(m.startswith(str(private_root)) for m in maps)

    mark = s.log_size()
    store = private_root / "1"
    os.truncate(store / "similarity.npy", 0)  # was SIGBUS on the next request touching an unmapped page
    (store / "arrays.npz").write_bytes(b"garbage")
    (store / "ids.json").write_text("{}")
    s.wait_log(r"bundle files changed in the model store, serving its private copy unchanged", 2, since=mark)
    assert lists(s) == before
    (store / bundle.CHECKSUMS).write_text('{"metadata.json": "0"}')  # now a different (broken) bundle: refused
    s.wait_log(r"model reload refused, keeping the current version.*not a bundle file|partial|mismatch", 2,
               since=mark)
    assert lists(s) == before
    assert sorted(s.worker_pids()) == workers  # no worker died and none was respawned
    assert s.get("/version").json()["model_checksum"] == checksum
    assert "Worker (pid" not in s.log()[mark:]  # gunicorn's "Worker (pid:N) was sent SIGBUS"


def test_the_copy_is_read_only_and_shared_by_the_slots_workers(start_server, private_root: Path) -> None:
    s = start_server(models_root=private_root, workers=3, extra_env=NO_TRACKING)
    [copy] = copies(s.run_dir, s.slot)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o555
    names = {p.name for p in copy.iterdir()}
    assert names == {*bundle.listed_files(private_root / "1"), bundle.CHECKSUMS}
    for p in copy.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o444
    bundle.verify(copy)
    assert bundle.checksum(copy) == bundle.checksum(private_root / "1")
    # a new version: one new copy, made once for the three workers
    mark = s.log_size()
    s.set_pointer(2)
    s.wait_log(r"model swapped in slot=\S+ version=2", 3, since=mark)
    made = [line for line in s.log()[mark:].splitlines() if "bundle copied for serving" in line]
    assert len(made) == 1, made
    assert bundle.checksum(private_root / "2") in {p.name for p in copies(s.run_dir, s.slot)}


# ---------------------------------------------------------------------- one slot, in this process
@pytest.fixture
def make_slot(tmp_path, private_root, monkeypatch):
    def make() -> ModelSlot:
        monkeypatch.setenv("MOVIEREC_RUN_DIR", str(tmp_path / "run"))
        monkeypatch.setenv("MOVIEREC_MODELS_DIR", str(private_root))
        monkeypatch.setenv("MOVIEREC_SLOT", "stable_1")
        monkeypatch.setenv("MOVIEREC_VERIFY_TRACKING", "0")
        for name in ("MOVIEREC_MODEL_DIR", "MOVIEREC_POINTER"):
            monkeypatch.delenv(name, raising=False)
        return ModelSlot(Serving.from_env(), Paths.from_env(), mysql=MySQL.from_env())

    return make


def point(slot: ModelSlot, version: int) -> None:
    from app.contracts.pointer import write_number

    write_number(Path(slot.serving.pointer_file), version)


def test_unused_copies_are_removed_after_their_grace(make_slot, private_root, monkeypatch) -> None:
    slot = make_slot()
    point(slot, 1)
    slot.check()
    first = slot.current.directory
    point(slot, 2)
    slot.check()
    assert slot.current.version == "2" and slot.current.source == private_root / "2"
    assert first.is_dir()  # within its grace: another worker may still be loading it
    monkeypatch.setattr(slot_module, "COPY_GRACE_S", 0.0)
    assert slot.sweep_copies() == [first.name]
    assert not first.exists()
    assert [p.name for p in slot.copies_dir.iterdir()] == [bundle.checksum(private_root / "2")]
    assert slot.sweep_copies() == []  # the one serving stays


def test_a_copy_that_does_not_match_is_never_put_in_place(make_slot, private_root) -> None:
    slot = make_slot()
    path = private_root / "1" / "similarity.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # altered, not re-hashed
    path.write_bytes(bytes(data))
    point(slot, 1)
    slot.check()
    assert slot.current is None
    assert "checksum mismatch on similarity.npy" in slot.reason
    assert list(slot.copies_dir.iterdir()) == []  # no copy, no half-made temporary left
    with pytest.raises(BundleError, match="checksum mismatch"):
        slot._private_copy(private_root / "1")


def test_a_damaged_copy_is_made_again(make_slot, private_root) -> None:
    slot = make_slot()
    point(slot, 1)
    slot.check()
    copy = slot.current.directory
    os.chmod(copy, 0o755)
    os.chmod(copy / "ids.json", 0o644)
    (copy / "ids.json").write_text("{}")
    os.chmod(copy, 0o555)
    again = make_slot()  # a new worker finds the damaged copy
    again.check()
    assert again.current is not None and again.current.directory == copy
    bundle.verify(copy)

"""The shared contracts: topology, slot pointers, bundles, durations, atomic files and locks."""

from __future__ import annotations

import json
import multiprocessing
from fractions import Fraction
from pathlib import Path

import pytest

from app.clock import format_duration, parse_duration, stamp_id
from app.contracts import bundle, pointer
from app.contracts.topology import CANARY, STABLE, Slot, Topology, parse_ports, topology, write_nginx_upstream
from app.files import LockHeld, exclusive_lock, sha256_file, write_json_atomic
from app.settings import Serving


# ---------------------------------------------------------------------- topology
def test_the_cards_topology_is_two_stable_replicas_and_a_canary_weighted_2_2_1():
    t = topology("")
    assert t.names == ("stable_1", "stable_2", "canary")
    assert [s.name for s in t.stable] == ["stable_1", "stable_2"] and t.canary.name == "canary"
    assert [s.weight for s in t.slots] == [2, 2, 1]
    assert t.canary_share() == Fraction(1, 5)  # 1 / (2 + 2 + 1): exactly 80/20
    assert t.selector(STABLE) == 'slot=~"stable_1|stable_2"' and t.selector(CANARY) == 'slot="canary"'
    assert t.canary.service == "inference_canary"


@pytest.mark.parametrize(("share", "weights"), [
    (0.2, [2, 2, 1]),      # canary 1 : stable 2 each  → 1/5
    (0.05, [19, 19, 2]),   # 2/40 = 0.05
    (0.5, [1, 1, 2]),      # 2/4
    (0.0, [1, 1, 0]),      # no canary traffic
    (1.0, [0, 0, 1]),
])
def test_a_canary_share_becomes_the_smallest_integer_weights(share, weights):
    t = topology("").with_canary_share(share)
    assert [s.weight for s in t.slots] == weights
    assert t.canary_share() == Fraction(share).limit_denominator(1000)


def test_a_fourth_slot_is_one_entry_and_shares_are_kept():
    t = Topology((Slot("stable_1", STABLE, 5001, 2), Slot("stable_2", STABLE, 5002, 2),
                  Slot("stable_3", STABLE, 5004, 2), Slot("canary", CANARY, 5003, 1)))
    assert [s.name for s in t.stable] == ["stable_1", "stable_2", "stable_3"]
    assert t.canary_share() == Fraction(1, 7)
    assert [s.weight for s in t.with_canary_share(0.25).slots] == [1, 1, 1, 1]  # 1/4 each


def test_ports_come_from_one_list_in_slot_order_or_named_pairs():
    assert parse_ports("6001,6002,6003") == {"stable_1": 6001, "stable_2": 6002, "canary": 6003}
    assert topology("canary=7003").slot("canary").port == 7003
    assert topology("canary=7003").slot("stable_1").port == 5001
    with pytest.raises(ValueError, match="2 ports for 3 slots"):
        parse_ports("6001,6002")
    with pytest.raises(ValueError, match="unknown slot"):
        topology("canary_2=7003")
    with pytest.raises(ValueError, match="repeat"):
        topology("5001,5001,5003")


def test_a_topology_without_exactly_one_canary_is_refused():
    with pytest.raises(ValueError, match="exactly one canary"):
        Topology((Slot("a", STABLE, 1, 1), Slot("b", STABLE, 2, 1)))
    with pytest.raises(ValueError, match="role"):
        Topology((Slot("a", "primary", 1, 1), Slot("c", CANARY, 2, 1)))


def test_settings_take_slot_roles_and_ports_from_the_topology(monkeypatch):
    monkeypatch.setenv("MOVIEREC_SLOT_PORTS", "6001,6002,6003")
    monkeypatch.setenv("MOVIEREC_SLOT", "canary")
    serving = Serving.from_env()
    assert serving.role == "canary" and serving.port_of("stable_2") == 6002
    monkeypatch.setenv("MOVIEREC_SLOT", "stable_9")
    with pytest.raises(ValueError, match="unknown slot 'stable_9'"):
        _ = Serving.from_env().role


def test_nginx_upstream_lines_carry_the_weights_and_mark_a_zero_weight_down(tmp_path):
    path = tmp_path / "upstream.conf"
    write_nginx_upstream(path, topology("").with_canary_share(0), lambda s: f"127.0.0.1:{s.port}")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("server 127.0.0.1:5001 weight=1 ")
    assert lines[2].startswith("server 127.0.0.1:5003 down ")
    assert len(lines) == 3


# ---------------------------------------------------------------------- slot pointers
def test_a_pointer_is_one_number_and_a_newline(tmp_path):
    pointer.write_slot(tmp_path, "canary", 12)
    assert (tmp_path / "slots" / "canary").read_bytes() == b"12\n"
    assert pointer.read_slot(tmp_path, "canary") == 12
    assert pointer.read_slot(tmp_path, "stable_1") is None
    assert list((tmp_path / "slots").iterdir()) == [tmp_path / "slots" / "canary"]  # no temp file left


@pytest.mark.parametrize("raw", [b"-1", b"3.0", b"abc", b"7 8", b"1" * 19, b"9" * 70, "٣".encode()])
def test_a_pointer_holding_anything_but_a_version_number_is_refused(raw):
    with pytest.raises(pointer.VersionFileError):
        pointer.parse(raw, "p")


def test_writing_something_else_than_a_version_number_is_refused(tmp_path):
    for bad in (-1, "2a", "", "1e3"):
        with pytest.raises(ValueError):
            pointer.write_number(tmp_path / "p", bad)
    assert not (tmp_path / "p").exists()


def test_version_txt_first_then_the_run_dirs_stable_pointer(tmp_path):
    version_file = tmp_path / "version.txt"
    assert pointer.read_stable(version_file, tmp_path) is None
    pointer.write_number(tmp_path / "slots" / "stable", 4)
    assert pointer.read_stable(version_file, tmp_path) == 4
    pointer.write_stable(version_file, tmp_path, 5)
    assert version_file.read_text() == "5\n" and pointer.read_stable(version_file, tmp_path) == 5


# ---------------------------------------------------------------------- bundles
def _bundle(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"algorithm": "toy", "version": 3}))
    (directory / "weights.bin").write_bytes(b"\x00\x01" * 100)
    bundle.write_checksums(directory, ["weights.bin"])
    return directory


def test_a_bundle_verifies_and_its_checksum_names_every_file(tmp_path):
    b = _bundle(tmp_path / "3")
    assert bundle.verify(b) == {"algorithm": "toy", "version": 3}
    sums = json.loads((b / "checksums.json").read_text())
    assert sums == {"metadata.json": sha256_file(b / "metadata.json"), "weights.bin": sha256_file(b / "weights.bin")}
    assert bundle.checksum(b) == sha256_file(b / "checksums.json")
    assert bundle.problem(b) is None


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda b: (b / "weights.bin").write_bytes(b"tampered"), "checksum mismatch on weights.bin"),
    (lambda b: (b / "weights.bin").unlink(), "partial: weights.bin missing"),
    (lambda b: (b / "checksums.json").unlink(), "checksums.json missing"),
    (lambda b: (b / "checksums.json").write_text("{"), "checksums.json is corrupt"),
    (lambda b: (b / "checksums.json").write_text('{"weights.bin": "x"}'), "does not list metadata.json"),
    (lambda b: (b / "checksums.json").write_text('{"metadata.json": "x", "../etc/passwd": "y"}'), "not a bundle file"),
])
def test_a_damaged_bundle_is_refused_with_the_reason(tmp_path, damage, reason):
    b = _bundle(tmp_path / "3")
    damage(b)
    with pytest.raises(bundle.BundleError, match=reason.replace(".", r"\.")):
        bundle.verify(b)
    assert reason in bundle.problem(b)


def test_a_missing_bundle_and_a_required_file_not_listed(tmp_path):
    assert "does not exist" in bundle.problem(tmp_path / "9")
    with pytest.raises(bundle.BundleError, match=r"similarity\.npy not listed"):
        bundle.verify(_bundle(tmp_path / "3"), required=["similarity.npy"])


def test_the_signature_changes_when_any_listed_file_changes(tmp_path):
    b = _bundle(tmp_path / "3")
    before = bundle.signature(b)
    assert before == bundle.signature(b)
    (b / "weights.bin").write_bytes(b"\x00\x02" * 100)
    assert bundle.signature(b) != before


# ---------------------------------------------------------------------- durations, ids, files, locks
@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("30", 30.0), ("15m", 900.0), ("6h", 21600.0), ("2d", 172800.0),
    ("1w", 604800.0), ("1.5h", 5400.0), (" 2 d ", 172800.0),
])
def test_one_duration_grammar(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 days", "-1s", "h", "1x", "1d2h"])
def test_durations_that_do_not_parse_say_so(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1s"), (59, "59s"), (900, "15m"), (43200, "12h"),
                                               (172800, "2d"), (90, "90s")])
def test_durations_format_in_the_largest_whole_unit(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == max(1, round(seconds))


def test_ids_sort_by_time_and_do_not_collide():
    ids = [stamp_id() for _ in range(200)]
    assert len(set(ids)) == 200 and all(len(i) == len("20261124T073000Z-3fa9c1") for i in ids)


def test_json_written_atomically_leaves_no_temp_file(tmp_path):
    write_json_atomic(tmp_path / "state.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": [1, 2], "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _try_lock(path: str, queue) -> None:
    try:
        with exclusive_lock(path, "pid=child"):
            queue.put("got it")
    except LockHeld as exc:
        queue.put(f"held: {exc.holder}")


def test_a_lock_is_exclusive_across_processes_and_names_its_holder(tmp_path):
    path = tmp_path / "run.lock"
    queue = multiprocessing.get_context("fork").Queue()
    with exclusive_lock(path, "pid=parent candidate=7"):
        child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(path), queue))
        child.start()
        child.join(10)
        assert queue.get(timeout=5) == "held: pid=parent candidate=7"
    child = multiprocessing.get_context("fork").Process(target=_try_lock, args=(str(path), queue))
    child.start()
    child.join(10)
    assert queue.get(timeout=5) == "got it"  # released when the holder's descriptor closed

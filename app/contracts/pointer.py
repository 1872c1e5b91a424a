"""Version numbers on disk: `version.txt` and the slot pointers, written atomically.

Two kinds of small files name a model version (design section 4):

- ``version.txt`` (``Paths.version_file``): the latest version that passed the release gate, i.e.
  the version the stable replicas serve. Written when a release promotes a candidate.
- slot pointers ``<run>/slots/<slot>`` (``stable_1``, ``stable_2``, ``canary``): the version that
  slot must serve. Every worker of the slot's inference server polls its pointer and hot-swaps the
  model when the number changes, so writing a pointer *is* deploying. ``<run>/slots/stable`` is the
  runtime twin of ``version.txt`` (a checkout's ``version.txt`` may be reset by git; the run dir is
  the live truth).

A reader must never see a torn number, so every write goes to a temporary file in the same
directory, is fsync'd and renamed over the old one (then the directory is fsync'd).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from app.model import BUNDLE_FILES, CHECKSUMS

SLOTS: tuple[str, ...] = ("stable_1", "stable_2", "canary")
STABLE_SLOTS: tuple[str, ...] = ("stable_1", "stable_2")
CANARY = "canary"
STABLE_POINTER = "stable"


class VersionFileError(ValueError):
    """A version file exists but does not hold a version number."""


def write_text_atomic(path: Path, text: str) -> None:
    """Temp file + fsync + rename + fsync of the directory: readers see the old or the new text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: dict) -> None:
    """A JSON document written with `write_text_atomic` (state files, manifests)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_number(path: Path) -> int | None:
    """The version number a file holds; None when the file is missing or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise VersionFileError(f"{path} holds {text[:40]!r}, not a version number") from exc


def write_number(path: Path, version: int) -> None:
    """Atomically replace the file's content with the version number (and a newline)."""
    if int(version) < 0:
        raise ValueError(f"version numbers are non-negative, got {version}")
    write_text_atomic(Path(path), f"{int(version)}\n")


def slot_pointer(run_dir: Path, slot: str) -> Path:
    """`<run>/slots/<slot>`: the file the slot's inference server polls (MOVIEREC_POINTER default)."""
    return Path(run_dir) / "slots" / slot


def read_slot(run_dir: Path, slot: str) -> int | None:
    return read_number(slot_pointer(run_dir, slot))


def write_slot(run_dir: Path, slot: str, version: int) -> None:
    write_number(slot_pointer(run_dir, slot), version)


def read_stable(version_file: Path, run_dir: Path) -> int | None:
    """The stable version: `version.txt`, else the run dir's stable pointer, else None."""
    found = read_number(version_file)
    return found if found is not None else read_number(slot_pointer(run_dir, STABLE_POINTER))


def write_stable(version_file: Path, run_dir: Path, version: int) -> None:
    """After a promotion: `version.txt` and `<run>/slots/stable` both name the new stable version."""
    write_number(slot_pointer(run_dir, STABLE_POINTER), version)
    write_number(version_file, version)


def bundle_problem(models_dir: Path, version: int) -> str | None:
    """Why `models/<version>/` may not be served (missing, partial, checksum mismatch), or None if it may."""
    directory = Path(models_dir) / str(version)
    sums_path = directory / CHECKSUMS
    if not directory.is_dir():
        return f"model bundle {directory} does not exist"
    try:
        sums = json.loads(sums_path.read_text())
    except FileNotFoundError:
        return f"model bundle {directory} is partial: {CHECKSUMS} missing"
    except json.JSONDecodeError as exc:
        return f"model bundle {directory}: {CHECKSUMS} is corrupt ({exc})"
    for name in BUNDLE_FILES:
        path = directory / name
        if not path.exists():
            return f"model bundle {directory} is partial: {name} missing"
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sums.get(name):
            return f"model bundle {directory}: checksum mismatch on {name}"
    return None

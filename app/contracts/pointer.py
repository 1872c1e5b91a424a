"""Version numbers on disk: `version.txt` and the slot pointers (design section 4). One writer, one reader.

Two kinds of small files name a model version:

- ``version.txt`` (``Paths.version_file``): the latest version that passed the release gate, i.e.
  the version the stable replicas serve. Written when a release promotes a candidate.
- slot pointers ``<run>/slots/<slot>``: the version that slot must serve. Every worker of the slot's
  inference server polls its pointer and hot-swaps the model when the number changes, so writing a
  pointer *is* deploying. ``<run>/slots/stable`` is the runtime twin of ``version.txt`` (a
  checkout's ``version.txt`` may be reset by git; the run dir is the live truth).

The format is one non-negative decimal number and a newline. Every write goes through
`app.files.write_text_atomic` (fsync, rename, fsync of the directory), so a reader never sees a torn
number; every read goes through `parse`, which refuses anything else (at most `MAX_BYTES`).
"""

from __future__ import annotations

from pathlib import Path

from app.files import write_text_atomic

STABLE_POINTER = "stable"
MAX_BYTES = 64
MAX_DIGITS = 18  # fits a signed 64-bit column


class VersionFileError(ValueError):
    """A version file exists but does not hold a version number."""


def parse(raw: bytes | str, where: str | Path = "pointer") -> int:
    """The version number in a pointer's bytes; `VersionFileError` naming `where` otherwise."""
    data = raw.encode("ascii", "replace") if isinstance(raw, str) else raw
    text = data[: MAX_BYTES + 1].decode("ascii", "replace").strip()
    if len(data) > MAX_BYTES or not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        raise VersionFileError(f"{where} holds {text[:20]!r}, not a version number")
    return int(text)


def format_number(version: int | str) -> str:
    """The exact text of a pointer naming `version` (refuses anything but a non-negative integer)."""
    text = str(version).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        raise ValueError(f"a version pointer holds a non-negative version number, not {version!r}")
    return f"{int(text)}\n"


def read_number(path: str | Path) -> int | None:
    """The version number a file holds; None when the file is missing or empty."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    if not raw.strip():
        return None
    return parse(raw, path)


def write_number(path: str | Path, version: int | str) -> None:
    """Atomically replace the file's content with the version number (and a newline)."""
    write_text_atomic(Path(path), format_number(version))


def slot_pointer(run_dir: str | Path, slot: str) -> Path:
    """``<run>/slots/<slot>``: the file the slot's inference server polls (``MOVIEREC_POINTER`` default)."""
    return Path(run_dir) / "slots" / slot


def read_slot(run_dir: str | Path, slot: str) -> int | None:
    return read_number(slot_pointer(run_dir, slot))


def write_slot(run_dir: str | Path, slot: str, version: int) -> None:
    write_number(slot_pointer(run_dir, slot), version)


def read_stable(version_file: str | Path, run_dir: str | Path) -> int | None:
    """The stable version: `version.txt`, else the run dir's stable pointer, else None."""
    found = read_number(version_file)
    return found if found is not None else read_number(slot_pointer(run_dir, STABLE_POINTER))


def write_stable(version_file: str | Path, run_dir: str | Path, version: int) -> None:
    """After a promotion: `version.txt` and ``<run>/slots/stable`` both name the new stable version."""
    write_number(slot_pointer(run_dir, STABLE_POINTER), version)
    write_number(version_file, version)

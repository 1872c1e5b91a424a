"""The model bundle on disk (design section 4): a folder of files, its metadata and its checksums.

Every bundle, whatever its algorithm, is ``models/<version>/`` holding

- ``metadata.json``: ``algorithm`` (the key the recommender registry loads it by), ``params``,
  ``version``, ``trained_at``, ``data_checksum``, ``rmse`` and other metrics, ``code_commit``;
- the algorithm's own files (arrays only, never pickles); large arrays each in a ``<name>.npy`` of
  their own, named by the metadata's ``npy_arrays`` list, so a server can memory-map them read-only;
- ``checksums.json``: the sha256 of every other file, written last.

A bundle may be served only once `verify` passes: every listed file present and matching, and
``metadata.json`` among them. The trainer writes with `write_checksums`; the server (before a swap),
the release (before a deploy) and the registry (before versioning) all call `verify` here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.files import sha256_file, write_json_atomic

METADATA = "metadata.json"
CHECKSUMS = "checksums.json"
NPY_ARRAYS = "npy_arrays"  # metadata key: arrays stored as their own <name>.npy (memory-mapped at load)


class BundleError(ValueError):
    """A model bundle is missing, partial or corrupt; the message says which file and why."""


def write_checksums(directory: str | Path, names: Iterable[str]) -> dict[str, str]:
    """Checksum `names` (plus ``metadata.json``) and write ``checksums.json`` last, atomically."""
    directory = Path(directory)
    listed = sorted({*names, METADATA} - {CHECKSUMS})
    sums = {name: sha256_file(directory / name) for name in listed}
    write_json_atomic(directory / CHECKSUMS, sums)
    return sums


def listed_files(directory: str | Path) -> dict[str, str]:
    """``checksums.json`` as {file: sha256}; `BundleError` when the bundle has none or it is corrupt."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"model bundle {directory} does not exist")
    try:
        sums = json.loads((directory / CHECKSUMS).read_text())
    except FileNotFoundError:
        raise BundleError(f"model bundle {directory} is partial: {CHECKSUMS} missing") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {directory}: {CHECKSUMS} is corrupt ({exc})") from exc
    if not isinstance(sums, dict) or METADATA not in sums:
        raise BundleError(f"model bundle {directory}: {CHECKSUMS} does not list {METADATA}")
    for name in sums:
        if not isinstance(name, str) or "/" in name or name.startswith(".") or name == CHECKSUMS:
            raise BundleError(f"model bundle {directory}: {CHECKSUMS} lists {name!r}, not a bundle file")
    return sums


def verify(directory: str | Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """Check every listed file (and `required` ones) against its checksum; return the metadata."""
    directory = Path(directory)
    sums = listed_files(directory)
    for name in required:
        if name not in sums:
            raise BundleError(f"model bundle {directory} is partial: {name} not listed in {CHECKSUMS}")
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"model bundle {directory} is partial: {name} missing")
        if sha256_file(path) != expected:
            raise BundleError(f"model bundle {directory}: checksum mismatch on {name} (corrupt or tampered)")
    return read_metadata(directory)


def problem(directory: str | Path) -> str | None:
    """Why the bundle may not be served, or None if it may (for callers that report, not raise)."""
    try:
        verify(directory)
    except BundleError as exc:
        return str(exc)
    return None


def read_metadata(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    try:
        meta = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {directory}: {METADATA} cannot be read ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"model bundle {directory}: {METADATA} is not a JSON object")
    return meta


def checksum(directory: str | Path) -> str:
    """One sha256 naming the whole bundle: that of its ``checksums.json`` (which names every file)."""
    return sha256_file(Path(directory) / CHECKSUMS)


def signature(directory: str | Path) -> tuple:
    """(name, mtime_ns, size, inode) of the checksums file and every file it lists: a cheap "did it change"."""
    directory = Path(directory)
    names = [CHECKSUMS]
    with contextlib.suppress(OSError, ValueError, TypeError):
        names += sorted(json.loads((directory / CHECKSUMS).read_text()))
    sig = []
    for name in names:
        try:
            st = os.stat(directory / name)
            sig.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except (OSError, TypeError):
            sig.append((name, None))
    return tuple(sig)


def bundle_dir(models_dir: str | Path, version: int | str) -> Path:
    """``<models>/<version>/``."""
    return Path(models_dir) / str(int(version))

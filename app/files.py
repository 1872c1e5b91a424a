"""Small file primitives every part shares: atomic writes, checksums, exclusive locks.

Written once here so that a pointer, a state file, a manifest and a report are all made durable the
same way: a temporary file in the same directory, fsync'd, renamed over the old one, then the
directory fsync'd. A reader sees the old content or the new one, never a torn file, even after a
power cut.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names the file and what the holder wrote in it."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"lock {path} is held ({holder or 'holder unknown'})")
        self.path = path
        self.holder = holder


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Temp file + fsync + rename + fsync of the directory: readers see the old or the new text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Binary twin of `write_text_atomic`: `write` fills an open file (numpy given a file object appends no suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """A JSON document (sorted keys, indented) written with `write_text_atomic`."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (bundles reach gigabytes at the real size)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | Path, holder: str) -> Iterator[Path]:
    """Hold an `flock` on `path` (created if missing) without waiting; `LockHeld` if another has it.

    `holder` (e.g. ``pid=12 candidate=7``) is written into the file so the refusal can name who
    holds it. Closing the descriptor releases the lock, so a process that dies frees it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(path, os.pread(fd, 200, 0).decode(errors="replace").strip()) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)

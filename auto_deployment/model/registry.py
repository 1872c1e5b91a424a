"""Versioning a model that passed the gate: number, bundle, DVC, `tracking` row, git — all or nothing.

A version is *made* by `create_version`, in this order:

1. the prepared tables replace those of `data/` (the pipeline prepares in a staging copy, so `data/`
   only ever holds the data of a version), and the staged bundle is moved to `models/<n>/`;
2. ``dvc add data models/<n>`` writes `data.dvc` and `models/<n>.dvc` (and DVC's `.gitignore` lines);
3. ``dvc push`` sends both to the DVC remote (`DVC_REMOTE`, default the local directory
   `<run>/dvc-remote`, configured in `.dvc/config` as the default remote when none is set);
4. the `tracking` row in MySQL (refused if the number already has one: rows are never overwritten);
5. a git commit of exactly those files, whose message names the version, data checksum and RMSE;
6. ``git push`` when `GIT_REMOTE` is set.

Every step registers how to undo itself; if any step fails the undo runs in reverse order, so a
failed run leaves no bundle, no `.dvc` file, no commit and no row behind (objects already pushed to
the DVC remote stay: they are content-addressed and harmless). MySQL down at the tracking step thus
never reaches git; a failed commit or push deletes the row again. ``git push`` comes last because a
pushed commit is the one thing that cannot be taken back.

A process killed outright (SIGKILL, power loss) runs no undo, so before touching anything
`create_version` saves every file it may change and writes a journal,
`<run>/pipeline/version-in-progress.json`; the next run (`repair_interrupted`, at its start and again
before versioning) finds it and keeps the version if its commit was made, else undoes the half of it.

Numbers: ``next_version`` is one more than the largest number seen anywhere (`version.txt`,
`models/<n>/`, `models/<n>.dvc`, tracking rows), so a number once used never means something else.

`version.txt` is *not* written here: it names the version the stable replicas serve, and the
release controller writes it when it promotes a candidate (`app.contracts.pointer.write_stable`);
`commit_promotion` then commits it. A version that passed the gate but was never promoted has its
bundle, `.dvc` files, commit and tracking row, and leaves `version.txt` alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app import store
from app.contracts.bundle import CHECKSUMS
from app.contracts.bundle import checksum as bundle_checksum
from app.contracts.pointer import read_number
from app.contracts.tables import FILES, REJECTED_COUNTS, data_checksum
from app.files import write_json_atomic
from app.logs import kv
from app.settings import MySQL, Paths, Pipeline

log = logging.getLogger(__name__)

DVC_REMOTE_NAME = "movierec"
GIT_IDENTITY = ("movierec pipeline", "pipeline@movierec.local")
COMMAND_TIMEOUT_S = 600.0
DATA_FILES = (*FILES.values(), REJECTED_COUNTS)
JOURNAL = "version-in-progress.json"  # under <run>/pipeline/: a version being made (see repair_interrupted)


class VersionError(RuntimeError):
    """A versioning step failed; the message says which command and why."""


@dataclass(frozen=True)
class Layout:
    """Where a version lives: the git + DVC repository and the data/models/version paths inside it."""

    root: Path
    data_dir: Path
    models_dir: Path
    version_file: Path
    run_dir: Path
    dvc_remote: str = ""
    git_remote: str = ""

    @classmethod
    def from_settings(cls, paths: Paths | None = None, pipeline: Pipeline | None = None) -> Layout:
        paths = paths or Paths.from_env()
        pipeline = pipeline or Pipeline.from_env()
        return cls(root=Path(pipeline.repo_dir).resolve(), data_dir=Path(paths.data_dir).resolve(),
                   models_dir=Path(paths.models_dir).resolve(), version_file=Path(paths.version_file).resolve(),
                   run_dir=Path(paths.run_dir).resolve(), dvc_remote=pipeline.dvc_remote,
                   git_remote=pipeline.git_remote)

    def rel(self, path: Path) -> str:
        """`path` relative to the repository root (DVC and git want relative paths)."""
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError as exc:
            raise VersionError(f"{path} is outside the repository {self.root} (MOVIEREC_REPO_DIR)") from exc

    def dvc_file(self, path: Path) -> Path:
        return Path(path).parent / (Path(path).name + ".dvc")

    def bundle_dir(self, version: int) -> Path:
        return self.models_dir / str(version)


@dataclass
class LatestVersion:
    number: int
    data_checksum: str
    source: str  # "tracking" or "bundle"


@dataclass
class VersionResult:
    version: int
    data_checksum: str
    model_checksum: str
    commit: str
    dvc_remote: str
    pushed: bool
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "timings": {k: round(v, 3) for k, v in self.timings.items()}}


# --- commands --------------------------------------------------------------------------------------


def _dvc_bin() -> str:
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else "dvc"


def run(args: Sequence[str], cwd: Path, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command, return its stdout; raise VersionError naming the command and its error output."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0", "COLUMNS": "100000"}
    try:
        done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VersionError(_redact(f"`{' '.join(args[:3])}` could not run: {exc}")) from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-600:]
        raise VersionError(_redact(f"`{' '.join(args[:4])}` failed (exit {done.returncode}): {tail}"))
    return done.stdout


def _redact(message: str) -> str:
    """Credentials in remote URLs (`https://user:token@host/...`) never reach logs or notices."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", message)


def git(layout: Layout, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """git in the repository; commits get a pipeline identity when the repository has none."""
    identity: list[str] = []
    if args and args[0] == "commit":
        try:
            run(["git", "config", "user.email"], layout.root)
        except VersionError:
            identity = ["-c", f"user.name={GIT_IDENTITY[0]}", "-c", f"user.email={GIT_IDENTITY[1]}"]
    for attempt in range(5):  # another process may hold .git/index.lock for a moment
        try:
            return run(["git", *identity, *args], layout.root, timeout)
        except VersionError as exc:
            if "index.lock" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def dvc(layout: Layout, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    return run([_dvc_bin(), *args], layout.root, timeout)


def head_commit(layout: Layout) -> str | None:
    try:
        return git(layout, "rev-parse", "--verify", "-q", "HEAD").strip() or None
    except VersionError:
        return None


# --- repository setup ------------------------------------------------------------------------------


def ensure_repo(layout: Layout) -> None:
    """The root is a git work tree holding data/ and models/; DVC is initialised (once)."""
    try:
        top = Path(git(layout, "rev-parse", "--show-toplevel").strip()).resolve()
    except VersionError as exc:
        raise VersionError(f"{layout.root} is not a git repository (MOVIEREC_REPO_DIR): {exc}") from exc
    if top != layout.root:
        raise VersionError(f"{layout.root} is not the top of its git repository ({top})")
    layout.rel(layout.data_dir)
    layout.rel(layout.models_dir)
    if not (layout.root / ".dvc").is_dir():
        dvc(layout, "init", "-q")
        log.info("DVC initialised", extra=kv(repo=layout.root))


def ensure_remote(layout: Layout) -> tuple[str, str]:
    """(name, url) of the DVC remote to push to; configures `.dvc/config` when needed."""
    # one `dvc config -l` (plain `key=value` lines; `dvc remote list` renders through rich and wraps long URLs)
    config = dict(line.partition("=")[::2] for line in dvc(layout, "config", "-l").splitlines() if "=" in line)
    default = config.get("core.remote", "")
    if not layout.dvc_remote and default:
        return default, config.get(f"remote.{default}.url", "")
    url = layout.dvc_remote or str(layout.run_dir / "dvc-remote")
    current = config.get(f"remote.{DVC_REMOTE_NAME}.url", "")
    if current == url:
        return DVC_REMOTE_NAME, url
    if current:
        dvc(layout, "remote", "modify", DVC_REMOTE_NAME, "url", url)
    else:
        dvc(layout, "remote", "add", *([] if default else ["-d"]), DVC_REMOTE_NAME, url)
    log.info("DVC remote configured", extra=kv(name=DVC_REMOTE_NAME, url=url, default=not default))
    return DVC_REMOTE_NAME, url


# --- numbers ---------------------------------------------------------------------------------------


def _local_numbers(layout: Layout) -> list[int]:
    numbers = []
    if layout.models_dir.is_dir():
        for entry in layout.models_dir.iterdir():
            stem = entry.name[:-4] if entry.name.endswith(".dvc") else entry.name
            if stem.isdigit():
                numbers.append(int(stem))
    return numbers


def _tracking_rows(mysql: MySQL | None) -> list[dict[str, Any]] | None:
    """Every tracking row (version number and data checksum), or None when MySQL is unreachable."""
    if mysql is None:
        return None
    try:
        return store.tracking_rows(mysql)
    except Exception as exc:  # any MySQL trouble means "not known from MySQL"
        log.warning("tracking table unreachable; using local versions only", extra=kv(error=exc))
        return None


def next_version(layout: Layout, mysql: MySQL | None = None) -> int:
    """One more than any number in version.txt, models/, models/*.dvc or the tracking table."""
    seen = _local_numbers(layout)
    current = read_number(layout.version_file)
    if current is not None:
        seen.append(current)
    rows = _tracking_rows(mysql)
    if rows:
        seen.extend(r["version_number"] for r in rows)
    return max(seen, default=0) + 1


def latest_version(layout: Layout, mysql: MySQL | None = None) -> LatestVersion | None:
    """The newest version and the checksum of its data: the tracking table, else the newest local bundle."""
    rows = _tracking_rows(mysql)
    if rows:
        last = rows[-1]
        return LatestVersion(last["version_number"], str(last["data_checksum"] or ""), "tracking")
    for number in sorted(set(_local_numbers(layout)), reverse=True):
        meta = layout.bundle_dir(number) / "metadata.json"
        if (layout.bundle_dir(number) / CHECKSUMS).exists() and meta.exists():
            with contextlib.suppress(OSError, ValueError):
                return LatestVersion(number, str(json.loads(meta.read_text()).get("data_checksum", "")), "bundle")
    return None


# --- all or nothing --------------------------------------------------------------------------------


class _Undo:
    """Compensating actions, run newest first; an action that fails is logged and the rest still run."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run(self) -> list[str]:
        problems = []
        for what, action in reversed(self._actions):
            try:
                action()
                log.info("rolled back", extra=kv(step=what))
            except Exception as exc:  # keep undoing the rest
                problems.append(f"{what}: {exc}")
                log.error("roll back failed", extra=kv(step=what, error=exc))
        self._actions.clear()
        return problems


def _save_file(path: Path, backup_dir: Path) -> Callable[[], None]:
    """Copy `path` aside now; the returned action puts it back (or removes it if it did not exist)."""
    path = Path(path)
    kept = backup_dir / (hashlib.sha1(str(path).encode()).hexdigest()[:12] + "-" + path.name)
    if path.exists() or kept.exists():
        if not kept.exists():  # saved already (the journal saves first): the file has not changed since
            backup_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, kept)

        def restore() -> None:
            tmp = path.with_name(f".{path.name}.restore")
            shutil.copy2(kept, tmp)
            os.replace(tmp, path)

        return restore

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return remove


def _install_tables(staged: Path, data_dir: Path, backup_dir: Path, undo: _Undo) -> None:
    """Replace the tables of data/ by the staged ones, each file by an atomic rename."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        source = staged / name
        if not source.exists():
            continue
        undo.push(f"data/{name}", _save_file(data_dir / name, backup_dir))
        tmp = data_dir / f".{name}.incoming"
        shutil.copy2(source, tmp)
        os.replace(tmp, data_dir / name)


def _commit_message(version: int, checksum: str, rmse: float, metrics: dict[str, Any]) -> str:
    ndcg = metrics.get("ndcg@20")
    lines = [f"model version {version}: data {checksum[:12]}, RMSE {rmse:.4f}", "",
             f"version: {version}", f"data checksum: {checksum}", f"RMSE: {rmse:.6f}"]
    if ndcg is not None:
        lines.append(f"NDCG@20: {ndcg:.6f}")
    return "\n".join(lines) + "\n"


def _tracking_row(version: int, bundle: Path, checksum: str, model_sum: str, data_created: datetime,
                  metrics: dict[str, Any]) -> dict[str, Any]:
    meta = json.loads((bundle / "metadata.json").read_text())
    trained = meta.get("trained_at")
    trained_on = (datetime.strptime(trained, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if trained
                  else datetime.now(UTC))
    return {
        "version_number": version,
        "data_creation": data_created,
        "trained_on": trained_on,
        "model_rmse": float(metrics["rmse"]),
        "data_checksum": checksum,
        "model_checksum": model_sum,
        "code_commit": meta.get("code_commit", "unknown"),
        "algorithm": meta.get("algorithm", ""),
        "params": meta.get("params", {}),
        "train_size": int(meta.get("train_size", 0)),
        "metrics": metrics,
    }


def _record_tracking(mysql: MySQL, row: dict[str, Any]) -> Callable[[], None]:
    """Insert the row; return the action that deletes it again."""
    version = int(row["version_number"])
    if store.has_tracking_row(mysql, version):  # record_tracking upserts; a used number is never overwritten
        raise VersionError(f"tracking already has a row for version {version}")
    store.record_tracking(mysql, row)
    return lambda: store.delete_tracking(mysql, version)


def _journal_path(layout: Layout) -> Path:
    return layout.run_dir / "pipeline" / JOURNAL


def _open_journal(layout: Layout, version: int, old_head: str | None, work_dir: Path, files: list[Path]) -> None:
    """Save `files` aside (or note they are absent) and say so on disk, before any of them changes."""
    backup = Path(work_dir) / "backup"
    saved = {}
    for path in dict.fromkeys(files):
        _save_file(path, backup)
        kept = backup / (hashlib.sha1(str(path).encode()).hexdigest()[:12] + "-" + path.name)
        saved[str(path)] = str(kept) if kept.exists() else ""
    write_json_atomic(_journal_path(layout), {"version": version, "old_head": old_head, "work_dir": str(work_dir),
                                              "files": saved, "pid": os.getpid()})


def repair_interrupted(layout: Layout, mysql: MySQL) -> str | None:
    """Finish the business of a `create_version` that was killed: keep its version if committed, else undo it.

    Returns what was done (None: nothing was interrupted). Raises VersionError if the undo fails (MySQL
    down...): the journal stays, and the next run tries again.
    """
    path = _journal_path(layout)
    if not path.is_file():
        return None
    journal = json.loads(path.read_text())
    version, old_head = int(journal["version"]), journal.get("old_head")
    made = git(layout, "log", "--format=%s", f"{old_head}..HEAD" if old_head else "HEAD").splitlines() \
        if head_commit(layout) not in (None, old_head) else []
    if any(s.startswith(f"model version {version}:") for s in made):
        what = f"interrupted version {version} was committed: kept"
    else:
        for name, kept in journal["files"].items():
            if not kept:
                Path(name).unlink(missing_ok=True)  # it did not exist before the version
            elif Path(kept).is_file():
                _save_file(Path(name), Path(kept).parent)()  # the copy saved before the version: put back
        shutil.rmtree(layout.bundle_dir(version), ignore_errors=True)
        try:
            store.delete_tracking(mysql, version)
        except Exception as exc:  # any MySQL trouble: the row may still be there, try again next run
            raise VersionError(f"interrupted version {version}: tracking row not removed: {exc}") from exc
        staged = [rel for rel in git(layout, "diff", "--cached", "--name-only").splitlines()
                  if rel == layout.rel(layout.dvc_file(layout.data_dir)) or rel.endswith(".gitignore")
                  or rel.startswith((".dvc/", ".dvcignore", layout.rel(layout.models_dir) + "/"))]
        if staged:
            _unstage(layout, old_head, staged)
        what = f"interrupted version {version} undone: bundle, .dvc files, data/ tables, tracking row, git index"
    path.unlink()
    shutil.rmtree(journal["work_dir"], ignore_errors=True)
    log.warning("repaired an interrupted version", extra=kv(version=version, done=what, pid=journal.get("pid")))
    return what


def create_version(
    layout: Layout,
    version: int,
    staged_data: Path,
    staged_bundle: Path,
    metrics: dict[str, Any],
    mysql: MySQL,
    *,
    work_dir: Path,
    data_created: datetime | None = None,
) -> VersionResult:
    """Make `version` out of the staged tables and bundle, or leave everything as it was and raise."""
    timings: dict[str, float] = {}
    undo = _Undo()
    bundle = layout.bundle_dir(version)
    data_rel, bundle_rel = layout.rel(layout.data_dir), layout.rel(bundle)
    data_dvc, bundle_dvc = layout.dvc_file(layout.data_dir), layout.dvc_file(bundle)
    backup = Path(work_dir) / "backup"
    old_head = head_commit(layout)
    checksum = data_checksum(staged_data)
    rmse = float(metrics["rmse"])

    def timed(name: str, started: float) -> None:
        timings[name] = time.perf_counter() - started
        log.info("version step done", extra=kv(version=version, step=name, seconds=round(timings[name], 3)))

    journal_open = False
    try:
        t0 = time.perf_counter()
        ensure_repo(layout)
        repair_interrupted(layout, mysql)
        remote, remote_url = ensure_remote(layout)
        if bundle.exists() or bundle_dvc.exists():
            raise VersionError(f"version {version} already exists in {layout.models_dir}")
        journal_open = True
        _open_journal(layout, version, old_head, work_dir,
                      [*(layout.data_dir / n for n in DATA_FILES if (Path(staged_data) / n).exists()), data_dvc,
                       bundle_dvc, layout.root / ".gitignore", layout.data_dir.parent / ".gitignore",
                       bundle.parent / ".gitignore", layout.root / ".dvc" / "config",
                       layout.root / ".dvc" / ".gitignore", layout.root / ".dvcignore"])
        timed("setup", t0)

        t0 = time.perf_counter()
        _install_tables(Path(staged_data), layout.data_dir, backup, undo)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        undo.push(f"models/{version}", lambda: shutil.rmtree(bundle, ignore_errors=True))  # also a partial move
        shutil.move(str(staged_bundle), str(bundle))
        if data_checksum(layout.data_dir) != checksum:
            raise VersionError("data/ does not hold the staged tables after installing them")
        timed("install", t0)

        t0 = time.perf_counter()
        ignore_files = [layout.root / ".gitignore", layout.data_dir.parent / ".gitignore",
                        bundle.parent / ".gitignore"]
        tracked_meta = [layout.root / ".dvc" / "config", layout.root / ".dvc" / ".gitignore",
                        layout.root / ".dvcignore"]
        for path in dict.fromkeys([data_dvc, bundle_dvc, *ignore_files]):
            undo.push(f"file {layout.rel(path)}", _save_file(path, backup))
        dvc(layout, "add", "-q", data_rel, bundle_rel)
        timed("dvc_add", t0)

        t0 = time.perf_counter()
        dvc(layout, "push", "-q", "-r", remote, layout.rel(data_dvc), layout.rel(bundle_dvc))
        timed("dvc_push", t0)

        t0 = time.perf_counter()
        model_sum = bundle_checksum(bundle)
        row = _tracking_row(version, bundle, checksum, model_sum, data_created or datetime.now(UTC), metrics)
        try:
            undo.push("tracking row", _record_tracking(mysql, row))
        except Exception as exc:  # store and row errors alike mean "no row"
            raise VersionError(f"tracking row not written to MySQL {mysql.host}:{mysql.port}: {exc}") from exc
        timed("tracking", t0)

        t0 = time.perf_counter()
        paths = [layout.rel(p) for p in dict.fromkeys([data_dvc, bundle_dvc, *ignore_files, *tracked_meta])
                 if p.exists()]
        git(layout, "add", "--", *paths)
        undo.push("git index", lambda: _unstage(layout, old_head, paths))
        git(layout, "commit", "-q", "-m", _commit_message(version, checksum, rmse, metrics), "--", *paths)
        undo.push("git commit", lambda: _uncommit(layout, old_head))
        commit = head_commit(layout) or ""
        timed("git_commit", t0)

        pushed = False
        if layout.git_remote:
            t0 = time.perf_counter()
            git(layout, "push", "-q", layout.git_remote, "HEAD")
            pushed = True
            timed("git_push", t0)
    except BaseException as exc:
        log.error("versioning failed, rolling back", extra=kv(version=version, error=exc))
        problems = undo.run()
        if problems:
            raise VersionError(f"{exc}; and rolling back failed: {'; '.join(problems)}") from exc
        if journal_open:  # undone in this process: nothing left for the next run to repair
            _journal_path(layout).unlink(missing_ok=True)
        raise
    _journal_path(layout).unlink(missing_ok=True)
    log.info("version created", extra=kv(version=version, commit=commit[:12], data=checksum[:12], rmse=rmse,
                                          remote=remote_url, pushed=pushed))
    return VersionResult(version, checksum, model_sum, commit, remote_url, pushed, timings)


def _unstage(layout: Layout, old_head: str | None, paths: list[str]) -> None:
    if old_head:
        git(layout, "reset", "-q", old_head, "--", *paths)
    else:
        git(layout, "rm", "-q", "--cached", "--ignore-unmatch", "--", *paths)


def _uncommit(layout: Layout, old_head: str | None) -> None:
    if old_head:
        git(layout, "reset", "-q", "--soft", old_head)
    else:
        git(layout, "update-ref", "-d", "HEAD")


def commit_promotion(layout: Layout, version: int) -> str | None:
    """After a release promoted `version`: commit version.txt (and push). Returns the commit, None if nothing to do.

    Best effort: the release has happened, so a git problem is logged and reported, never undone.
    """
    try:
        path = layout.rel(layout.version_file)
    except VersionError:
        log.info("version file outside the repository: nothing to commit", extra=kv(path=layout.version_file))
        return None
    if read_number(layout.version_file) != version:
        return None
    git(layout, "add", "--", path)
    if not git(layout, "status", "--porcelain", "--", path).strip():
        return None
    git(layout, "commit", "-q", "-m", f"version {version} promoted to stable\n", "--", path)
    if layout.git_remote:
        git(layout, "push", "-q", layout.git_remote, "HEAD")
    return head_commit(layout)

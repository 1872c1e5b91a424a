"""What a fresh platform needs before its slots start: data, model 1, its tracking row, pointed slots.

Each step is idempotent and goes through the contract module that owns the format, never around it:
the default world through `simulator.datasets.write_default_data`, bundles through `app.contracts.bundle`
(verified before any slot is pointed at one), ``version.txt`` and the slot pointers through
`app.contracts.pointer`, the ``tracking`` row through `app.store`, NGINX's upstream weights through
`app.contracts.topology` (`ops.render.ensure_upstream`).

``python -m ops.stack up`` calls these natively; compose's ``model-init`` job runs
``python -m ops.bootstrap --runtime compose`` (docker/model-init.sh) on its volumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from app import store
from app.contracts import bundle, pointer
from app.contracts.topology import Slot, Topology, loopback_address, service_address, upstream_path
from app.logs import kv, setup_logging
from app.settings import ROOT, MySQL, Paths, Serving
from ops.render import ensure_upstream
from ops.services import StackError

log = logging.getLogger(__name__)

FIRST_VERSION = 1


def versions(models_dir: Path) -> list[int]:
    """Version numbers that have a bundle folder in `models_dir` (a training in progress has none yet)."""
    if not models_dir.is_dir():
        return []
    return sorted(int(p.name) for p in models_dir.iterdir() if p.is_dir() and p.name.isdigit())


def train_first_model(data_dir: Path, models_dir: Path, env: Mapping[str, str], evaluate: bool) -> Path:
    """Default data (unless some is there) and model 1, trained beside its final folder and renamed into it.

    The rename makes the bundle appear whole: a crash mid-training leaves no ``models/1`` to serve.
    """
    from simulator.datasets import write_default_data

    write_default_data(data_dir)
    final = bundle.bundle_dir(models_dir, FIRST_VERSION)
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "auto_deployment", "train", "--data-dir", str(data_dir),
               "--out", str(partial), "--version", str(FIRST_VERSION), *(["--evaluate"] if evaluate else [])]
    log.info("training model 1 on the default data", extra=kv(command=" ".join(command)))
    done = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise StackError(f"training model 1 failed (exit {done.returncode}): {' '.join(command)}\n"
                         f"{done.stdout}{done.stderr}")
    partial.replace(final)
    return final


def ensure_model(
    data_dir: Path, models_dir: Path, version_file: Path, env: Mapping[str, str], evaluate: bool = True
) -> int:
    """The stable version to serve, verified; default data and model 1 are made on a fresh checkout."""
    if not versions(models_dir):
        train_first_model(data_dir, models_dir, env, evaluate)
    try:
        stable = pointer.read_number(version_file)
        if stable is None and bundle.bundle_dir(models_dir, FIRST_VERSION).is_dir():
            pointer.write_number(version_file, FIRST_VERSION)
            stable = FIRST_VERSION
    except pointer.VersionFileError as exc:
        raise StackError(str(exc)) from exc
    if stable is None:
        raise StackError(f"{version_file} names no version and {models_dir} has no model 1")
    try:
        bundle.verify(bundle.bundle_dir(models_dir, stable))
    except bundle.BundleError as exc:
        raise StackError(f"{version_file} names version {stable}, which may not be served: {exc}") from exc
    return stable


def record_tracking(settings: MySQL, models_dir: Path, version: int) -> bool:
    """Give the served version its `tracking` row if it has none (model 1 made here on a fresh checkout).

    Versions made by the pipeline have theirs already; an existing row is never touched. Without a row an
    auditor could not say what data and RMSE the first model had.
    """
    directory = bundle.bundle_dir(models_dir, version)
    try:
        if store.has_tracking_row(settings, version):
            return False
        metadata = {**bundle.read_metadata(directory), "version": version}
        store.record_tracking(settings, store.tracking_row(metadata, model_checksum=bundle.checksum(directory)))
    except store.DatabaseError as exc:
        raise StackError(str(exc)) from exc
    log.info("tracking row recorded", extra=kv(version=version, bundle=directory))
    return True


def point_slots(run_dir: Path, topology: Topology, version: int, overwrite: bool) -> list[str]:
    """Point every slot of the topology at `version`; on a live platform only those without a valid pointer
    (a release may be under way). Returns the slots pointed."""
    pointed = []
    for slot in topology.names:
        try:
            current = pointer.read_slot(run_dir, slot)
        except pointer.VersionFileError:
            current = None
        if overwrite or current is None:
            if current != version:
                pointer.write_slot(run_dir, slot, version)
            pointed.append(slot)
    return pointed


# ---------------------------------------------------------------------- CLI (compose's model-init)


ADDRESSES: dict[str, Callable[[Slot], str]] = {"native": loopback_address, "compose": service_address}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=sorted(ADDRESSES), default="compose",
                        help="how NGINX reaches the slots in the upstream file written when missing")
    parser.add_argument("--evaluate", action="store_true", help="record model 1's offline evaluation (slower)")
    parser.add_argument("--tracking", action="store_true", help="also give the stable version its tracking row")
    args = parser.parse_args(argv)
    setup_logging()
    paths, serving = Paths.from_env(), Serving.from_env()
    try:
        stable = ensure_model(paths.data_dir, paths.models_dir, paths.version_file, os.environ, evaluate=args.evaluate)
        if args.tracking:
            record_tracking(MySQL.from_env(), paths.models_dir, stable)
        pointed = point_slots(paths.run_dir, serving.topology, stable, overwrite=False)
        ensure_upstream(upstream_path(paths.run_dir), serving.topology, ADDRESSES[args.runtime], reset=False)
    except StackError as exc:
        print(f"ops.bootstrap: {exc}", file=sys.stderr)
        return 1
    for slot in pointed:
        print(f"bootstrap: pointed {slot} at version {stable}")
    now = " ".join(f"{slot}={pointer.read_slot(paths.run_dir, slot)}" for slot in serving.topology.names)
    print(f"bootstrap: stable version {stable}; pointers: {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

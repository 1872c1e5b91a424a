"""`make up` plays the small default world unless DEMO_WORLD_DIR names a large one (`simulator traffic --world-dir`)."""

from __future__ import annotations

import configparser
import os
import shlex
from pathlib import Path

from app.settings import ROOT
from ops.render import native_context, render
from ops.services import DEMO_DEFAULTS, Stack


def _simulator_command(tmp_path: Path, **extra: str) -> list[str]:
    env = {**os.environ, "MOVIEREC_RUN_DIR": str(tmp_path / "run"), "MOVIEREC_REPO_DIR": str(ROOT), **extra}
    if "DEMO_WORLD_DIR" not in extra:
        env.pop("DEMO_WORLD_DIR", None)
    parser = configparser.RawConfigParser()
    parser.read_string(render("supervisord", native_context(Stack.from_env(env, demo=True))))
    # supervisord expands %(name)s (so "%%" is one "%"), then splits the command the shell's way
    return shlex.split(parser["program:simulator"]["command"] % {})


def test_unset_the_demo_plays_the_small_default_world(tmp_path):
    assert DEMO_DEFAULTS["DEMO_WORLD_DIR"] == ""
    command = _simulator_command(tmp_path)
    assert command[1:4] == ["-m", "simulator", "traffic"]
    assert "--world-dir" not in command


def test_a_world_dir_is_passed_to_the_simulator_whole(tmp_path):
    world = tmp_path / "large world 1M"  # a space and a %: one argument, not supervisor's %(...)s expansion
    command = _simulator_command(tmp_path, DEMO_WORLD_DIR=f"{world}%x")
    assert command[command.index("--world-dir") + 1] == f"{world}%x"
    assert command[1:4] == ["-m", "simulator", "traffic"] and "--rate" in command

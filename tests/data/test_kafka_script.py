"""`ops/kafka.sh` pieces that need no broker."""

from __future__ import annotations

import re
import subprocess

from app.settings import ROOT


def test_cluster_ids_never_start_with_a_dash_the_storage_tool_would_read_as_an_option() -> None:
    # one random id in 64 starts with '-': 500 draws would all have passed by chance once in ~2,600 runs
    done = subprocess.run(["bash", str(ROOT / "ops" / "kafka.sh"), "cluster-id", "500"], capture_output=True,
                          text=True, timeout=60, check=True)
    ids = done.stdout.split()
    assert len(ids) == len(set(ids)) == 500
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids), [i for i in ids if i[0] == "-"]

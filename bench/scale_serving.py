"""`python -m bench.scale_serving BUNDLE`: a large bundle (e.g. 1M users) served by the native stack, through NGINX.

`bench server` measures the default world's small model; this serves any bundle ``bench scale``'s quality run
keeps (``python -m bench.scale --quality 1M --keep DIR`` leaves ``DIR/bundle``) on a native stack of its own
(`ops.stack up` in a temporary directory, free loopback ports, the bundle linked in as model 1), and measures:

* per Gunicorn worker (every slot): RSS, PSS (shared pages counted once per sharer) and USS (private pages:
  what one more worker adds), after the load below, so the pages the requests touch are counted;
* `/recommend` at `BENCH_RATE` req/s (default 200) for `BENCH_SECONDS` (default 60) through NGINX, open loop
  (the simulator's load mode, latency from the scheduled send), users drawn from every user of the bundle;
  a 10 s run at the same rate first warms the stack and is not counted.

Load time and the top-20 cost in one process are `bench.scale --serve BUNDLE`'s (`serve_one`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.settings import ROOT
from bench.server import _children, _free_ports
from bench.table import render
from ops.services import Stack, program_pids
from simulator.load import run_load

WARM_SECONDS = 10.0


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) of one process, MB, from /proc/<pid>/smaps_rollup."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def kb(name: str) -> float:
        return int(re.search(rf"^{name}:\s+(\d+) kB", rollup, re.M).group(1)) / 1024

    return {"rss": kb("Rss"), "pss": kb("Pss"), "uss": kb("Private_Clean") + kb("Private_Dirty")}


def run(args: list[str] | tuple[str, ...] = ()) -> str:
    if not args:
        return "bench scale_serving: name a bundle directory (python -m bench.scale --quality 1M --keep DIR)\n"
    import numpy as np

    bundle = Path(args[0]).absolute()
    rate = float(os.environ.get("BENCH_RATE", "200"))
    seconds = float(os.environ.get("BENCH_SECONDS", "60"))
    users = np.load(bundle / "user_ids.npy", mmap_mode="r") if (bundle / "user_ids.npy").exists() else None
    if users is None:
        from app.model import Recommender

        users = Recommender.load(bundle).user_ids
    users = np.asarray(users, np.int64)
    base = Path(tempfile.mkdtemp(prefix="movierec-scale-serving-"))
    (base / "models").mkdir()
    (base / "models" / "1").symlink_to(bundle)
    (base / "version.txt").write_text("1\n")
    from app.contracts.topology import Topology

    n_slots = len(Topology().slots)
    ports = _free_ports(n_slots + 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "PROMETHEUS_", "MYSQL_"))}
    env.update(
        PYTHONPATH=str(ROOT), MOVIEREC_RUN_DIR=str(base / "run"), MOVIEREC_DATA_DIR=str(base / "data"),
        MOVIEREC_MODELS_DIR=str(base / "models"), MOVIEREC_VERSION_FILE=str(base / "version.txt"),
        MOVIEREC_SLOT_PORTS=",".join(map(str, ports[:n_slots])), NGINX_PORT=str(ports[n_slots]),
        NGINX_STATUS_PORT=str(ports[n_slots + 1]), PROMETHEUS_PORT=str(ports[n_slots + 2]),
        ALERTMANAGER_PORT=str(ports[n_slots + 3]), MYSQL_PORT=str(ports[n_slots + 4]),
        MTAIL_PORT=str(ports[n_slots + 5]),
    )
    started = time.perf_counter()
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up", "--timeout", "900"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800)
    up_s = time.perf_counter() - started
    stack = Stack.from_env(env)
    try:
        if up.returncode != 0:
            return f"bench scale_serving: the stack did not come up:\n{up.stdout[-3000:]}{up.stderr[-3000:]}\n"
        run_load(stack.nginx_url, users, rate, WARM_SECONDS, concurrency=32, seed=1, progress=False)
        s = run_load(stack.nginx_url, users, rate, seconds, concurrency=32, seed=3, progress=False).as_dict()
        mem_rows = []
        for slot, pid in sorted(program_pids(stack).items()):
            if slot in Topology().names and pid:
                for worker in _children(pid):
                    m = memory(worker)
                    mem_rows.append([f"{slot} worker {worker}", m["rss"], m["pss"], m["uss"]])
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        table = render(
            f"Serving {len(users):,} users ({bundle.name}) through NGINX: /recommend at {rate:.0f} req/s for "
            f"{seconds:.0f} s, open loop, users drawn from all of them",
            ["requests", "req/s", "p50 ms", "p99 ms", "max ms", "failed", "stack up s"],
            [[s["requests"], s["rps"], s["p50_ms"], s["p99_ms"], s["max_ms"], s["errors"] + s["timeouts"], up_s]],
            note=f"target: p99 <= 10 ms, zero errors. Load average at the end: {' '.join(loadavg)}. Stack up: "
                 "`ops.stack up` with the bundle as model 1 (MariaDB, NGINX, Prometheus, every slot's workers "
                 "loading and verifying the bundle).",
        )
        table += "\n" + render("Memory per Gunicorn worker after the load (MB)", ["process", "RSS", "PSS", "USS"],
                               mem_rows, note="USS: the worker's private pages, what one more worker adds; the "
                                              "bundle's memory-mapped pages are shared through the page cache.")
        return table
    finally:
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    print(run(sys.argv[1:]))

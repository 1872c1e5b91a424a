"""Serving benchmark: Gunicorn/Flask alone and behind NGINX, on a native stack started for the run.

Measured side by side in one run, on the default world's model (2,000 users × 1,500 movies):

* throughput (wrk, closed loop, `BENCH_WRK_SECONDS` each): `/health` (the framework floor),
  `/recommend` with provenance on, `/recommend` with provenance off (a fourth server on the same
  bundle with `MOVIEREC_PROVENANCE=0`), and `/recommend` through NGINX;
* the service bar (open loop at `BENCH_RATE` requests/s for `BENCH_SECONDS`, the simulator's load
  mode, latency counted from the scheduled send time): p50/p99 and errors, direct and through NGINX;
* memory per worker (peak RSS, and PSS: shared pages counted once per sharer).

wrk and the servers share the machine's two cores, so the throughput figures are a floor.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from app.settings import ROOT
from bench.table import render
from ops.stack import Stack, program_pids
from simulator.load import run_load

WRK_SCRIPT = """
math.randomseed(7)
request = function()
  return wrk.format("GET", "/recommend/" .. math.random(1, 2100))
end
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, seconds: int, script: Path | None = None) -> dict[str, float]:
    """Closed-loop throughput and latency percentiles from wrk (2 threads, 16 connections)."""
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),
        "p50": _ms(pct["50"]),
        "p99": _ms(pct["99"]),
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def _memory(pid: int) -> tuple[float, float]:
    """(peak RSS, PSS) in MB of one process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) / 1024
    return hwm, pss


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def run() -> str:
    if not shutil.which("wrk"):
        return "bench server: wrk is not installed (Debian package wrk; `make sysdeps`)\n"
    wrk_s = int(os.environ.get("BENCH_WRK_SECONDS", "15"))
    rate = float(os.environ.get("BENCH_RATE", "200"))
    seconds = float(os.environ.get("BENCH_SECONDS", "60"))
    base = Path(tempfile.mkdtemp(prefix="movierec-bench-"))
    ports = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "PROMETHEUS_", "MYSQL_"))}
    env.update(
        PYTHONPATH=str(ROOT), MOVIEREC_RUN_DIR=str(base / "run"), MOVIEREC_DATA_DIR=str(base / "data"),
        MOVIEREC_MODELS_DIR=str(base / "models"), MOVIEREC_VERSION_FILE=str(base / "version.txt"),
        MOVIEREC_SLOT_PORTS=",".join(map(str, ports[:3])), NGINX_PORT=str(ports[3]), NGINX_STATUS_PORT=str(ports[4]),
        PROMETHEUS_PORT=str(ports[5]), ALERTMANAGER_PORT=str(ports[6]), MYSQL_PORT=str(ports[7]),
    )
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
    stack = Stack.from_env(env)
    noprov = None
    try:
        if up.returncode != 0:
            return f"bench server: the stack did not come up:\n{up.stdout}{up.stderr}\n"
        noprov_url = f"http://127.0.0.1:{ports[8]}"
        (base / "noprov-metrics").mkdir(exist_ok=True)
        noprov = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "app" / "gunicorn.conf.py"),
             "app:create_app()"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**stack.env, "MOVIEREC_SLOT": "stable_1", "MOVIEREC_PORT": str(ports[8]),
                 "MOVIEREC_HOST": "127.0.0.1", "MOVIEREC_PROVENANCE": "0",
                 "MOVIEREC_POINTER": str(stack.pointer("stable_1")),
                 "PROMETHEUS_MULTIPROC_DIR": str(base / "noprov-metrics")},
        )
        _wait_ready(noprov_url)
        script = base / "users.lua"
        script.write_text(WRK_SCRIPT)
        direct = stack.slot_url("stable_1")
        rows = []
        closed = [
            ("/health (framework floor)", f"{direct}/health", None),
            ("/recommend, provenance on", f"{direct}/recommend/1", script),
            ("/recommend, provenance off", f"{noprov_url}/recommend/1", script),
            ("/recommend through NGINX (3 slots)", f"{stack.nginx_url}/recommend/1", script),
        ]
        results = {}
        for name, url, lua in closed:
            results[name] = r = wrk(url, wrk_s, lua)
            rows.append([name, r["rps"], r["p50"], r["p99"], r["errors"]])
        floor = results["/health (framework floor)"]["rps"]
        on, off = results["/recommend, provenance on"]["rps"], results["/recommend, provenance off"]["rps"]
        table = render(
            f"Serving throughput, closed loop (wrk -t2 -c16, {wrk_s} s each, random users 1..2100)",
            ["endpoint", "req/s", "p50 ms", "p99 ms", "errors"], rows,
            note=f"recommend / health throughput ratio: {on / floor:.2f}; provenance on / off: {on / off:.2f}",
        )
        users = list(range(1, 2101))
        open_rows = []
        for name, url in (("inference server alone", direct), ("through NGINX", stack.nginx_url)):
            s = run_load(url, users, rate, seconds, concurrency=32, seed=3, progress=False)
            d = s.as_dict()
            open_rows.append([name, d["requests"], d["rps"], d["p50_ms"], d["p99_ms"], d["max_ms"],
                              d["errors"] + d["timeouts"]])
        table += "\n" + render(
            f"The bar: /recommend at {rate:.0f} req/s for {seconds:.0f} s, open loop (latency from scheduled send)",
            ["path", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "failed"], open_rows,
            note="target: p99 <= 25 ms at 200 req/s, zero errors",
        )
        mem_rows = []
        for slot, pid in sorted(program_pids(stack).items()):
            if slot in ("stable_1", "stable_2", "canary") and pid:
                for worker in _children(pid):
                    hwm, pss = _memory(worker)
                    mem_rows.append([f"{slot} worker {worker}", hwm, pss])
        table += "\n" + render("Memory per Gunicorn worker (MB)", ["process", "peak RSS", "PSS"], mem_rows)
        return table
    finally:
        if noprov is not None:
            os.killpg(noprov.pid, 15)
            noprov.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)

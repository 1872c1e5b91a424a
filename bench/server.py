"""Serving benchmark: Gunicorn/Flask alone and behind NGINX, on a native stack started for the run.

Measured side by side in one run, on the default world's model (2,000 users × 1,500 movies):

* throughput (wrk, closed loop, `BENCH_WRK_SECONDS` each): `/health` (the framework floor) and
  `/recommend` of the same slot, `/recommend` on two twin servers outside the stack that differ only
  in provenance (on / off), and `/recommend` through NGINX;
* the service bar (open loop at `BENCH_RATE` requests/s for `BENCH_SECONDS`, the simulator's load
  mode, latency counted from the scheduled send time): p50/p99 and errors, direct, direct with
  provenance off, and through NGINX;
* memory per worker (peak RSS, and PSS: shared pages counted once per sharer).

wrk, the servers and MariaDB share the machine's two cores, so the throughput figures are a floor,
and the closed-loop cost of provenance includes MariaDB's own CPU (its share is printed beside it).
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

from app.contracts.topology import Topology
from app.settings import ROOT
from bench.table import render
from ops.services import Stack, program_pids
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


def _cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when it is gone."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    topology = Topology()  # the platform's slots (app/contracts/topology.py): one free port each
    n_slots = len(topology.slots)
    ports = _free_ports(n_slots + 7)
    slot_ports, ports = ports[:n_slots], ports[n_slots:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "PROMETHEUS_", "MYSQL_"))}
    env.update(
        PYTHONPATH=str(ROOT), MOVIEREC_RUN_DIR=str(base / "run"), MOVIEREC_DATA_DIR=str(base / "data"),
        MOVIEREC_MODELS_DIR=str(base / "models"), MOVIEREC_VERSION_FILE=str(base / "version.txt"),
        MOVIEREC_SLOT_PORTS=",".join(map(str, slot_ports)), NGINX_PORT=str(ports[0]), NGINX_STATUS_PORT=str(ports[1]),
        PROMETHEUS_PORT=str(ports[2]), ALERTMANAGER_PORT=str(ports[3]), MYSQL_PORT=str(ports[4]),
    )
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
    stack = Stack.from_env(env)
    twins: list[subprocess.Popen] = []
    try:
        if up.returncode != 0:
            return f"bench server: the stack did not come up:\n{up.stdout}{up.stderr}\n"
        # Twin servers outside the stack (same bundle, not scraped, not behind NGINX) that differ only
        # in provenance: the on/off ratio compares like with like.
        twin_urls = {}
        first = topology.stable[0].name  # the slot measured directly; the twins serve its bundle
        for name, port, provenance in (("prov-on", ports[5], "1"), ("prov-off", ports[6], "0")):
            (base / f"{name}-metrics").mkdir(exist_ok=True)
            twins.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "app" / "gunicorn.conf.py"),
                 "app:create_app()"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                env={**stack.env, "MOVIEREC_SLOT": first, "MOVIEREC_PORT": str(port),
                     "MOVIEREC_HOST": "127.0.0.1", "MOVIEREC_PROVENANCE": provenance,
                     "MOVIEREC_POINTER": str(stack.pointer(first)),
                     "MOVIEREC_SPOOL_DIR": str(base / f"{name}-spool"),
                     "PROMETHEUS_MULTIPROC_DIR": str(base / f"{name}-metrics")},
            ))
            twin_urls[name] = f"http://127.0.0.1:{port}"
            _wait_ready(twin_urls[name])
        script = base / "users.lua"
        script.write_text(WRK_SCRIPT)
        direct = stack.slot_url(first)
        rows = []
        closed = [
            ("/health (framework floor)", f"{direct}/health", None),
            ("/recommend", f"{direct}/recommend/1", script),
            ("/recommend, twin with provenance on", f"{twin_urls['prov-on']}/recommend/1", script),
            ("/recommend, twin with provenance off", f"{twin_urls['prov-off']}/recommend/1", script),
            (f"/recommend through NGINX ({n_slots} slots)", f"{stack.nginx_url}/recommend/1", script),
        ]
        results = {}
        mariadb_pid = int((stack.run_dir / "mariadb" / "mariadb.pid").read_text().split()[0])
        for name, url, lua in closed:
            cpu_before = _cpu_s(mariadb_pid)
            results[name] = r = wrk(url, wrk_s, lua)
            db_share = (_cpu_s(mariadb_pid) - cpu_before) / (wrk_s * (os.cpu_count() or 1))
            rows.append([name, r["rps"], r["p50"], r["p99"], r["errors"], 100.0 * db_share])
        floor = results["/health (framework floor)"]["rps"]
        served = results["/recommend"]["rps"]
        on = results["/recommend, twin with provenance on"]["rps"]
        off = results["/recommend, twin with provenance off"]["rps"]
        table = render(
            f"Serving throughput, closed loop (wrk -t2 -c16, {wrk_s} s each, random users 1..2100)",
            ["endpoint", "req/s", "p50 ms", "p99 ms", "errors", "MariaDB CPU %"], rows,
            note=f"recommend / health throughput ratio: {served / floor:.2f}; provenance on / off: {on / off:.2f} "
                 "(MariaDB CPU %: its share of this machine's cores during the run, taken from the server)",
        )
        users = list(range(1, 2101))
        open_rows = []
        for name, url in (("inference server alone", direct), ("twin with provenance off", twin_urls["prov-off"]),
                          ("through NGINX", stack.nginx_url)):
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
            if slot in topology.names and pid:
                for worker in _children(pid):
                    hwm, pss = _memory(worker)
                    mem_rows.append([f"{slot} worker {worker}", hwm, pss])
        table += "\n" + render("Memory per Gunicorn worker (MB)", ["process", "peak RSS", "PSS"], mem_rows)
        return table
    finally:
        for twin in twins:
            os.killpg(twin.pid, 15)
            twin.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)

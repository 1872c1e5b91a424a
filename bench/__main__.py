"""`make bench`: every benchmark table, measured side by side in one run.

`python -m bench [model] [server] [pipeline]` runs a subset; no argument runs them all.
Each part is a module with `run() -> str` (its rendered tables).
"""

from __future__ import annotations

import importlib
import sys
import time

PARTS = ["model", "server", "pipeline", "scale", "release", "faults"]


def main(argv: list[str]) -> int:
    wanted = argv or PARTS
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"[bench {name}: not available in this build]\n")
                continue
            raise
        started = time.perf_counter()
        print(module.run())
        print(f"[bench {name}: {time.perf_counter() - started:.0f} s]\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

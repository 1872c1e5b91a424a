"""`make bench`: every benchmark table, measured side by side in one run.

`python -m bench [model] [server] [pipeline]` runs a subset; no argument runs them all. Other words are the
named parts' arguments: `python -m bench scale 10k 100k` (see bench/scale.py).
Each part is a module with `run() -> str` (its rendered tables).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time

PARTS = ["model", "server", "pipeline", "scale", "release", "faults"]


def main(argv: list[str]) -> int:
    # words that name no part are that part's arguments (`python -m bench scale 10k 100k`): run(args)
    options = [a for a in argv if a not in PARTS]
    wanted = [a for a in argv if a in PARTS] or PARTS
    if options and len(wanted) == len(PARTS) and not set(argv) & set(PARTS):
        print(f"unknown bench part(s) {options}; parts: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"[bench {name}: not available in this build]\n")
                continue
            raise
        started = time.perf_counter()
        takes_args = bool(inspect.signature(module.run).parameters)
        print(module.run(options) if options and takes_args else module.run())
        print(f"[bench {name}: {time.perf_counter() - started:.0f} s]\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

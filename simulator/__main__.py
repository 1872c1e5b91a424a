"""`python -m simulator`: the client that plays the streaming service against a running platform.

  traffic   a population of users: recommendation requests, then watching and rating, with the
            event log written to a file, stdout or Kafka (design section 3 formats)
  load      `/recommend` at a target rate: live progress and a latency / version-share summary
  loop      the feedback loop offline (no platform needed): serve → watch/rate → retrain for N rounds,
            our model beside popularity, with a JSON + HTML report (`simulator.loop`)
  world     write the data tables of a generated world of any size, up to the real 1M users × 27k
            movies (`simulator.world_scale`); `traffic`/`load --world-dir DIR` then play it

Both are deterministic given `--seed`, bounded by `--duration` (and a count), and only talk to
loopback unless `--allow-remote` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.settings import Kafka, Monitoring
from simulator import world_scale
from simulator.load import ensure_loopback, run_load
from simulator.population import Population, run_traffic
from simulator.world import World, movielens_world


def _sinks(specs: str, topic: str | None) -> tuple[Callable[[str], None], Callable[[], None]]:
    """Every line to each of the comma-separated sinks (e.g. `kafka,file:events.log`)."""
    pairs = [_sink(spec.strip(), topic) for spec in specs.split(",") if spec.strip()]
    if len(pairs) == 1:
        return pairs[0]

    def emit(line: str) -> None:
        for one, _ in pairs:
            one(line)

    def close() -> None:
        for _, done in pairs:
            done()

    return emit, close


def _sink(spec: str, topic: str | None) -> tuple[Callable[[str], None], Callable[[], None]]:
    """(emit, close) for `-` (stdout), `file:PATH` (append) or `kafka`."""
    if spec in ("-", "stdout"):
        return (lambda line: print(line, flush=False)), sys.stdout.flush
    if spec.startswith("file:"):
        fh = open(spec[5:], "a", encoding="utf-8")  # noqa: SIM115 (closed by the returned close)
        lock = threading.Lock()

        def emit(line: str) -> None:
            with lock:
                fh.write(line + "\n")

        return emit, fh.close
    if spec == "kafka":
        from simulator.kafka_sink import KafkaSink

        settings = Kafka.from_env()
        sink = KafkaSink(settings.bootstrap, topic or settings.topic)
        return sink.send, sink.flush
    raise ValueError(f"unknown --out {spec!r}: use -, file:PATH or kafka")


def _progress_printer(every_s: float = 10.0) -> Callable[[str], None]:
    """A live line on a terminal; one line every `every_s` seconds in a log file."""
    if sys.stderr.isatty():
        return lambda text: print("\r" + text, end="", file=sys.stderr, flush=True)
    last = [0.0]

    def write(text: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            print(text, file=sys.stderr, flush=True)

    return write


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    default_url = f"http://127.0.0.1:{Monitoring.from_env().nginx_port}"
    for name, text in (("traffic", "users who ask, watch and rate"), ("load", "requests at a target rate")):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--url", default=default_url, help="platform base URL (NGINX)")
        sp.add_argument("--seed", type=int, default=0, help="seed of every choice")
        sp.add_argument("--world", choices=("generated", "movielens"), default="generated",
                        help="whose users play: the seeded world's, or MovieLens-100k's with fitted tastes "
                             "(serve a model trained on MovieLens for that)")
        sp.add_argument("--world-seed", type=int, default=0, help="seed of the world (must match the data)")
        sp.add_argument("--world-dir", type=Path, default=None,
                        help="play the world written there by `python -m simulator world` (overrides --world)")
        sp.add_argument("--rate", type=float, default=20.0, help="sessions or requests per second")
        sp.add_argument("--duration", type=float, default=60.0, help="seconds to run (bounded)")
        sp.add_argument("--concurrency", type=int, default=16, help="parallel clients")
        sp.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
        sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    traffic = sub.choices["traffic"]
    traffic.add_argument("--out", default="-", help="event log: -, file:PATH, kafka, or several: kafka,file:PATH")
    traffic.add_argument("--topic", default=None, help="Kafka topic (default KAFKA_TOPIC)")
    traffic.add_argument("--max-sessions", type=int, default=None, help="stop after this many sessions")
    traffic.add_argument("--new-user-share", type=float, default=0.05, help="share of never-seen users")
    load = sub.choices["load"]
    load.add_argument("--max-requests", type=int, default=None, help="stop after this many requests")
    load.add_argument("--unknown-share", type=float, default=0.0, help="share of never-seen user ids")
    world_scale.add_parser(sub)
    from simulator import loop

    loop.add_arguments(sub.add_parser("loop", help="feedback loop: serve → watch/rate → retrain, ours vs popularity",
                                      description=loop.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "world":
        return world_scale.run(args)
    if args.mode == "loop":
        from simulator.loop import run_cli

        return run_cli(args)
    try:
        ensure_loopback(args.url, args.allow_remote)
    except ValueError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    if args.world_dir is not None:
        world = world_scale.load_world(args.world_dir)
    elif args.world == "movielens":
        world = movielens_world(seed=args.world_seed)
    else:
        world = World.generate(seed=args.world_seed)
    if args.mode == "traffic":
        emit, close = _sinks(args.out, args.topic)
        population = Population(world, seed=args.seed, new_user_share=args.new_user_share)
        try:
            summary = run_traffic(
                args.url, population, emit, args.rate, args.duration, args.max_sessions, args.concurrency,
                progress=_progress_printer(),
            )
        finally:
            close()
        print(file=sys.stderr)
    else:
        users = world.users["user_id"].astype(int).tolist()
        if args.unknown_share > 0:
            extra = max(1, int(len(users) * args.unknown_share))
            users += list(range(max(users) + 1, max(users) + 1 + extra))
        summary = run_load(args.url, users, args.rate, args.duration, args.concurrency, args.max_requests,
                           seed=args.seed)
    print(json.dumps(summary.as_dict()) if args.json else summary.render(), file=sys.stderr if args.mode ==
          "traffic" and args.out in ("-", "stdout") else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

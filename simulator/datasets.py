"""Ready-made training data for `make up` and the benchmarks: the default synthetic world, and MovieLens-100k.

* ``default_world_tables()`` / ``write_default_data()`` — the synthetic world of ``simulator.world``
  with its history; ``make up`` trains the first model on it, so the model serves the same users and
  movies the simulator then asks about.
* ``movielens_100k()`` — re-exported from ``simulator.movielens``.

``python -m simulator.datasets {movielens,world} --out DIR`` writes either as cleaned tables; the
pipeline then reads them like any other ``data/`` (``python -m auto_deployment evaluate --data-dir DIR``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.contracts.tables import FILES, Tables, save_tables
from app.logs import kv, setup_logging
from simulator.movielens import movielens_100k
from simulator.world import World

__all__ = ["DEFAULT_RATINGS", "default_world_tables", "movielens_100k", "write_default_data"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the default world


DEFAULT_RATINGS = 150_000


def default_world_tables(seed: int = 0, n_ratings: int = DEFAULT_RATINGS) -> Tables:
    """The default synthetic world (``simulator.world`` sizes) with its history, as tables."""
    world = World.generate(seed=seed)
    ratings, watches = world.history(n_ratings=n_ratings, seed=seed)
    return Tables(ratings=ratings, watches=watches, users=world.users.copy(), movies=world.movies.copy())


def write_default_data(data_dir: Path | str, seed: int = 0) -> bool:
    """Write the default world's tables to ``data_dir`` unless it already holds ratings.

    Returns True when it wrote. ``make up`` calls this so the first model has something to learn
    from; existing data (collected from the stream) is never overwritten.
    """
    data_dir = Path(data_dir)
    ratings_file = data_dir / FILES["ratings"]
    if ratings_file.is_file():
        with ratings_file.open() as fh:
            if sum(1 for _ in zip(range(2), fh, strict=False)) > 1:
                log.info("data present, default world not written", extra=kv(path=data_dir))
                return False
    save_tables(default_world_tables(seed=seed), data_dir)
    log.info("default world written", extra=kv(path=data_dir, seed=seed))
    return True


# ---------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.datasets",
                                     description="write a ready-made dataset as cleaned tables")
    parser.add_argument("dataset", choices=["movielens", "world"])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the tables to")
    parser.add_argument("--seed", type=int, default=0, help="world seed (world only)")
    parser.add_argument("--ratings", type=int, default=DEFAULT_RATINGS, help="ratings in history (world only)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="MovieLens files or their cache root (default: $MOVIEREC_CACHE_DIR/ml-100k)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.dataset == "movielens":
        tables = movielens_100k(args.cache_dir)
    else:
        tables = default_world_tables(seed=args.seed, n_ratings=args.ratings)
    save_tables(tables, args.out)
    log.info("tables written", extra=kv(dataset=args.dataset, path=args.out, ratings=len(tables.ratings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

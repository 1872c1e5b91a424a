"""The cleaned tables of `data/` (design section 4): names, columns, types, reading and writing.

Every producer (prepare, the world generator, the MovieLens importer) writes through
``save_tables`` and every consumer (train, evaluate, checks) reads through ``load_tables``, so the
on-disk format is decided here only. CSV keeps the files diffable and DVC-friendly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

RATINGS = ["user_id", "movie_id", "rating", "timestamp"]
WATCHES = ["user_id", "movie_id", "minutes", "first_seen", "last_seen"]
USERS = ["user_id", "age", "gender", "occupation"]
MOVIES = [
    "movie_id", "title", "year", "genres", "adult", "vote_average", "vote_count", "popularity", "runtime",
]
FILES = {"ratings": "ratings.csv", "watches": "watches.csv", "users": "users.csv", "movies": "movies.csv"}
REJECTED_COUNTS = "rejected_counts.json"


@dataclass
class Tables:
    ratings: pd.DataFrame
    watches: pd.DataFrame
    users: pd.DataFrame
    movies: pd.DataFrame

    @classmethod
    def empty(cls) -> Tables:
        return cls(
            ratings=pd.DataFrame(columns=RATINGS),
            watches=pd.DataFrame(columns=WATCHES),
            users=pd.DataFrame(columns=USERS),
            movies=pd.DataFrame(columns=MOVIES),
        )


def _typed(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    if name == "ratings":
        frame = frame.astype({"user_id": "int64", "movie_id": "str", "rating": "float64"})
        frame["timestamp"] = pd.to_numeric(frame["timestamp"], errors="coerce").fillna(0).astype("int64")
    elif name == "watches":
        frame = frame.astype({"user_id": "int64", "movie_id": "str", "minutes": "int64"})
    elif name == "users":
        frame = frame.astype({"user_id": "int64"})
        frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    elif name == "movies":
        frame = frame.astype({"movie_id": "str"})
        for col in ("year", "vote_average", "vote_count", "popularity", "runtime"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
        frame["adult"] = frame["adult"].map(
            lambda v: str(v).strip().lower() in {"true", "1", "yes"}
        ).astype(bool)
    return frame


# What training and evaluation read: not the watches, the largest table (30M rows at 1M users). A model that
# starts using watches must be given them here too: unread tables come back empty, not absent.
MODEL_TABLES = ("ratings", "users", "movies")


def load_tables(data_dir: Path, names: tuple[str, ...] | None = None) -> Tables:
    """Read the four tables, or only `names` (the others empty, with their columns); a missing file is an
    empty table with the right columns."""
    unknown = set(names or ()) - FILES.keys()
    if unknown:
        raise ValueError(f"no such table: {sorted(unknown)} (tables: {list(FILES)})")
    out = {}
    columns = {"ratings": RATINGS, "watches": WATCHES, "users": USERS, "movies": MOVIES}
    for name, filename in FILES.items():
        path = Path(data_dir) / filename
        if path.exists() and (names is None or name in names):
            # only an empty field is missing: a movie titled "nan" or "null" keeps its id
            frame = pd.read_csv(path, dtype={"movie_id": "str"}, keep_default_na=False, na_values=[""])
            missing = [c for c in columns[name] if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            out[name] = _typed(name, frame[columns[name]])
        else:
            out[name] = pd.DataFrame(columns=columns[name])
    return Tables(**out)


def save_tables(tables: Tables, data_dir: Path) -> None:
    """Write the tables atomically (temp file + rename), sorted so equal data gives equal bytes."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = {"ratings": ["user_id", "movie_id"], "watches": ["user_id", "movie_id"],
            "users": ["user_id"], "movies": ["movie_id"]}
    columns = {"ratings": RATINGS, "watches": WATCHES, "users": USERS, "movies": MOVIES}
    for name, filename in FILES.items():
        frame = getattr(tables, name)[columns[name]].sort_values(keys[name], kind="mergesort")
        tmp = data_dir / (filename + ".tmp")
        frame.to_csv(tmp, index=False, float_format="%.6g")
        tmp.replace(data_dir / filename)


def data_checksum(data_dir: Path) -> str:
    """SHA-256 over the four tables' bytes, in a fixed order: the identity of a training set."""
    digest = hashlib.sha256()
    for filename in sorted(FILES.values()):
        path = Path(data_dir) / filename
        digest.update(filename.encode())
        if path.exists():
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def write_rejected_counts(counts: dict[str, int], data_dir: Path) -> None:
    path = Path(data_dir) / REJECTED_COUNTS
    path.write_text(json.dumps(dict(sorted(counts.items())), indent=2) + "\n")

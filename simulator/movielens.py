"""MovieLens-100k in our table format: the classic benchmark, and a world the simulator can play.

No network but package registries is reachable here, and the copy of MovieLens-100k we can reach is
the one shipped inside the PyPI wheel of ``recbole``: we download that wheel with pip (without
installing it or its dependencies), extract only the three files we need into the cache, and convert
them. recbole is not a dependency of the platform.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from app.contracts.tables import MOVIES, RATINGS, USERS, WATCHES, Tables
from app.logs import kv
from app.settings import Paths
from simulator.ids import course_movie_id

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
_WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"


class MovieLensUnavailable(RuntimeError):
    """MovieLens-100k is neither cached nor downloadable; the message says where it looked and what to do."""
# MovieLens writes "Usual Suspects, The"; the course (TMDB) writes "The Usual Suspects"
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+), (?P<article>The|A|An|Il|La|Le|Les|L'|Das|Der|Die|Det|El|Los|Las)$")
_PAREN = re.compile(r"\s*\([^()]*\)")
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")


# ---------------------------------------------------------------------- MovieLens-100k


def ml100k_dir(cache_dir: Path | str | None = None) -> Path:
    """Folder holding the three MovieLens-100k files, fetched from the recbole wheel when missing.

    ``cache_dir`` may name the folder with the files themselves or a cache root that holds
    ``ml-100k/``; by default the root is ``Paths.cache_dir`` (``MOVIEREC_CACHE_DIR``).
    """
    base = Path(cache_dir) if cache_dir is not None else Paths.from_env().cache_dir / "ml-100k"
    for folder in (base, base / "ml-100k"):
        if all((folder / name).is_file() for name in ML100K_FILES):
            return folder
    target = base if base.name == "ml-100k" else base / "ml-100k"
    _fetch_ml100k(target)
    return target


def _fetch_ml100k(target: Path) -> None:
    """Download the recbole wheel with pip and extract only the MovieLens files, atomically."""
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ml100k-", dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", f"recbole=={RECBOLE_VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise MovieLensUnavailable(
                f"MovieLens-100k is not cached in {target} and could not be fetched: it comes from PyPI inside the "
                f"recbole=={RECBOLE_VERSION} wheel, and `pip download` failed (exit {done.returncode}). Is PyPI "
                f"reachable (proxy, PIP_INDEX_URL)? Or put ml-100k.inter/.user/.item in {target} "
                f"(MOVIEREC_CACHE_DIR). pip said: {(done.stderr or done.stdout).strip()[-300:]}")
        staging = Path(tmp) / "ml-100k"
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in ML100K_FILES:
                try:
                    member = wheel.getinfo(_WHEEL_FOLDER + name)
                except KeyError as exc:
                    raise RuntimeError(f"{wheels[0].name} has no {_WHEEL_FOLDER + name}") from exc
                with wheel.open(member) as src, (staging / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():  # a half-written folder from an interrupted run, or a concurrent winner
            if all((target / name).is_file() for name in ML100K_FILES):
                return
            shutil.rmtree(target)
        os.replace(staging, target)
    log.info("movielens-100k cached", extra=kv(path=target, wheel=f"recbole-{RECBOLE_VERSION}",
                                               seconds=round(time.perf_counter() - started, 2)))


def _read_atomic(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, header ``name:type``) with plain column names."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def course_title(raw: str) -> tuple[str, float]:
    """MovieLens title → (title as the course shows it, year found in the title or NaN).

    Drops alternative titles in parentheses (``Seven (Se7en)`` → ``Seven``) and moves a trailing
    article to the front (``Usual Suspects, The`` → ``The Usual Suspects``).
    """
    raw = raw.strip()
    found = _YEAR_IN_TITLE.search(raw)
    year = float(found.group(1)) if found else np.nan
    title = _PAREN.sub("", raw).strip() or raw
    match = _TRAILING_ARTICLE.match(title)
    if match:
        article = match.group("article")
        title = article + ("" if article.endswith("'") else " ") + match.group("body")
    return title, year


def _unique_ids(base_ids: list[str], years: list[float]) -> list[str]:
    """Make ids unique in list order: a repeat gets ``+2`` (``+3``…) before its year."""
    seen: set[str] = set()
    out = []
    for movie_id, year in zip(base_ids, years, strict=True):
        candidate, n = movie_id, 1
        while candidate in seen:
            n += 1
            if np.isnan(year):
                candidate = f"{movie_id}+{n}"
            else:
                stem = movie_id[: -len(str(int(year)))]
                candidate = f"{stem}{n}+{int(year)}"
        seen.add(candidate)
        out.append(candidate)
    return out


def convert_ml100k(folder: Path) -> Tables:
    """Turn the three RecBole MovieLens-100k files into our cleaned tables (watches stay empty)."""
    inter = _read_atomic(folder / "ml-100k.inter")
    users_raw = _read_atomic(folder / "ml-100k.user")
    items = _read_atomic(folder / "ml-100k.item").sort_values(
        "item_id", key=lambda s: s.astype(int), kind="mergesort", ignore_index=True)

    titles, years = [], []
    for raw_title, raw_year in zip(items["movie_title"], items["release_year"], strict=True):
        if raw_title.strip().lower() in {"unknown", "unkonwn", ""}:
            titles.append("unknown")
            years.append(np.nan)
            continue
        title, title_year = course_title(raw_title)
        year = float(raw_year) if raw_year.strip().isdigit() and len(raw_year.strip()) == 4 else title_year
        titles.append(title)
        years.append(year)
    ids = _unique_ids([course_movie_id(t, None if np.isnan(y) else y) for t, y in zip(titles, years, strict=True)],
                      years)
    id_of = dict(zip(items["item_id"].astype(int), ids, strict=True))

    ratings = pd.DataFrame({
        "user_id": inter["user_id"].astype("int64"),
        "movie_id": inter["item_id"].astype(int).map(id_of).astype(str),
        "rating": inter["rating"].astype("float64"),
        "timestamp": inter["timestamp"].astype(float).astype("int64"),
    })[RATINGS]
    stats = ratings.groupby("movie_id")["rating"].agg(["mean", "size"])
    n_users = ratings["user_id"].nunique()
    genres = [
        "|".join(g for g in cls.split() if g != "unknown") or np.nan for cls in items["class"]
    ]
    movies = pd.DataFrame({
        "movie_id": ids,
        "title": titles,
        "year": years,
        "genres": genres,
        "adult": False,
        # MovieLens has no TMDB votes: derive them from its own ratings (1-5 stars → 0-10 scale)
        "vote_average": (2.0 * pd.Series(ids).map(stats["mean"])).round(3).to_numpy(),
        "vote_count": pd.Series(ids).map(stats["size"]).fillna(0).astype("int64").to_numpy(),
        # popularity: share of all users who rated the movie, in percent
        "popularity": (100.0 * pd.Series(ids).map(stats["size"]).fillna(0) / n_users).round(4).to_numpy(),
        "runtime": np.nan,
    })[MOVIES]
    users = pd.DataFrame({
        "user_id": users_raw["user_id"].astype("int64"),
        "age": users_raw["age"].astype("int64"),
        "gender": users_raw["gender"].str.strip().str.upper(),
        "occupation": users_raw["occupation"].str.strip(),
    })[USERS]
    return Tables(ratings=ratings, watches=pd.DataFrame(columns=WATCHES), users=users, movies=movies)


def movielens_100k(cache_dir: Path | str | None = None) -> Tables:
    """MovieLens-100k as our tables: 100,000 ratings by 943 users of 1,682 movies (course-style ids)."""
    folder = ml100k_dir(cache_dir)
    tables = convert_ml100k(folder)
    log.info("movielens-100k loaded", extra=kv(path=folder, ratings=len(tables.ratings),
                                               users=len(tables.users), movies=len(tables.movies)))
    return tables



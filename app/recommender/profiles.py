"""What the base knows of users and movies besides ratings, read from the tables at training.

The rules of a list need a user's age (adult filter) and gender (cold-start key), and each movie's
``adult`` flag; cold start also needs the IMDb-style votes. Missing attributes are allowed: an
unknown age counts as a minor, an unknown gender uses everyone's ranking, a missing ``adult`` is
``False``. Users in the table who rated nothing are kept apart (``extra``): they are served by
attributes alone.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

Profile = tuple[float, str]  # (age or NaN, 'M' / 'F' / '')


def movie_attributes(movies: pd.DataFrame | None, movie_ids: np.ndarray) -> pd.DataFrame:
    """``adult`` (bool), ``vote_average``, ``vote_count`` per movie, in the order of `movie_ids`."""
    cols = ["adult", "vote_average", "vote_count"]
    if movies is None or movies.empty:
        frame = pd.DataFrame(index=movie_ids, columns=cols)
    else:
        m = movies.copy()
        m["movie_id"] = m["movie_id"].astype(str)
        m = m.drop_duplicates("movie_id").set_index("movie_id")
        frame = m.reindex(movie_ids)[[c for c in cols if c in m.columns]].reindex(columns=cols)
    frame["adult"] = frame["adult"].map(lambda v: str(v).strip().lower() in {"true", "1", "yes"}).astype(bool)
    frame["vote_average"] = pd.to_numeric(frame["vote_average"], errors="coerce")
    frame["vote_count"] = pd.to_numeric(frame["vote_count"], errors="coerce")
    return frame


def user_attributes(
    users: pd.DataFrame | None, user_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[int, Profile]]:
    """(age per inner user, gender per inner user, {raw id: profile} of users who rated nothing)."""
    n = len(user_ids)
    if users is None or users.empty:
        return np.full(n, np.nan), np.full(n, "", dtype="U1"), {}
    u = users.copy()
    u["user_id"] = pd.to_numeric(u["user_id"], errors="coerce")
    u = u.dropna(subset=["user_id"]).astype({"user_id": "int64"}).drop_duplicates("user_id").set_index("user_id")
    age = pd.to_numeric(u.get("age"), errors="coerce") if "age" in u else pd.Series(np.nan, index=u.index)
    gender = u["gender"].map(gender_key) if "gender" in u else pd.Series("", index=u.index)
    known = set(user_ids.tolist())
    extra = {int(k): (float(age[k]), str(gender[k])) for k in u.index if int(k) not in known}
    return (
        age.reindex(user_ids).to_numpy(float),
        gender.reindex(user_ids).fillna("").to_numpy("U1"),
        extra,
    )


def gender_key(value: object) -> str:
    """'M', 'F', or '' for anything else (the cold-start key of everyone)."""
    text = str(value).strip().upper()[:1]
    return text if text in {"M", "F"} else ""

"""Feedback-loop analysis: what retraining on our own recommendations does to what users see.

`python -m simulator loop --rounds N` plays the seeded world's users through N rounds of

    train on the history so far → serve a 20-movie list to each user of a fixed panel →
    each user has ``--picks`` sessions with that list (the traffic mode's cascade model,
    `simulator.population.Population.react`: take a listed movie they truly like, else pick one
    by popularity × taste) → the watches and ratings join the history → next round retrains,

once for our model (`app.model.Recommender`) and once for a popularity baseline, with the same
users, the same random numbers and the same starting history, and reports per round:

* ``exposure_gini``: Gini of how many lists each catalogue movie appeared in that round (every
  movie counts, also the never shown): ``G = Σ_i Σ_j |x_i − x_j| / (2 n² x̄)`` (no n/(n−1)
  correction), so equal exposure is 0 and everything on one of n movies is 1 − 1/n;
* ``coverage``: share of the catalogue shown in at least one list that round;
* ``mean_list_popularity``: mean over lists of the mean popularity of their movies, popularity being
  the share of users who rated the movie in the *initial* history (a fixed yardstick across rounds);
* ``diversity``: per-user intra-list diversity, mean over a list's pairs of the cosine distance
  between the movies' hidden taste vectors (the world's latent factors and genre mix), averaged over
  users;
* ``mean_true_rating`` and ``ndcg``: quality by the users' true tastes (the world knows them):
  the mean true rating of the listed movies (taste match), and NDCG@20 with gain ``2^(true − 1) − 1``
  against the user's best 20 movies they have not watched yet (usefulness: a movie already watched,
  or adult for a minor, earns nothing);
* ``take_rate``: share of sessions in which the user took a movie from the list;
* ``watched_share``: share of listed movies the user has already watched: the models train on
  ratings only, so a movie watched without a rating stays recommendable, and nobody takes it twice;
* ``history_gini``: Gini of the ratings per movie in the training history of that round (is the
  data itself concentrating?).

``--exclude-watched`` plays the fix the ``watched_share`` figure asks for: both recommenders skip
what the user has watched (our model is asked for a longer list and the watched ones are dropped).

Writes ``feedback_loop.json`` and a self-contained ``feedback_loop.html`` (inline SVG plots) to
``--out``. Deterministic given the arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from app.files import write_text_atomic
from app.logs import kv, setup_logging
from app.model import LIST_WIDTH, Recommender
from simulator.population import Population
from simulator.world import World

log = logging.getLogger(__name__)

ARMS = ("ours", "popularity")
METRICS = {  # key → (label, higher means)
    "exposure_gini": ("Gini of exposure across movies", "more concentrated"),
    "coverage": ("catalogue coverage", "wider"),
    "mean_list_popularity": ("mean list popularity (share of users who rated, initial history)", "more popular"),
    "diversity": ("intra-list diversity (cosine distance of taste vectors)", "more diverse"),
    "mean_true_rating": ("mean true rating of the listed movies", "better"),
    "ndcg": ("NDCG@20 of unwatched movies against true tastes", "better"),
    "take_rate": ("sessions that took a listed movie", "more taken"),
    "watched_share": ("listed movies the user already watched (unrated, so not excluded)", "staler lists"),
    "history_gini": ("Gini of ratings per movie in the training history", "more concentrated"),
}
DEFAULT_OUT = Path("reports/feedback-loop")
TEMPLATE = Path(__file__).with_name("loop_report.html.j2")


# ---------------------------------------------------------------------- metrics (pure functions)


def gini(x: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient ``Σ_i Σ_j |x_i − x_j| / (2 n² x̄)`` of non-negative values; 0 when all are 0."""
    v = np.sort(np.asarray(x, dtype=float))
    n, total = len(v), float(v.sum())
    if n == 0 or total == 0.0:
        return 0.0
    rank = np.arange(1, n + 1)
    return float(((2 * rank - n - 1) * v).sum() / (n * total))


def exposure(lists: np.ndarray, n_movies: int) -> np.ndarray:
    """How many lists each movie appears in; ``lists`` is (users, n) movie indices, −1 padded."""
    shown = lists[lists >= 0]
    return np.bincount(shown, minlength=n_movies)


def coverage(lists: np.ndarray, n_movies: int) -> float:
    """Share of the ``n_movies`` catalogue shown in at least one list."""
    return float((exposure(lists, n_movies) > 0).sum() / n_movies) if n_movies else 0.0


def mean_list_popularity(lists: np.ndarray, popularity: np.ndarray) -> float:
    """Mean over non-empty lists of the mean ``popularity`` of their movies."""
    valid = lists >= 0
    per_list = np.where(valid, popularity[np.where(valid, lists, 0)], 0.0).sum(axis=1)
    count = valid.sum(axis=1)
    keep = count > 0
    return float((per_list[keep] / count[keep]).mean()) if keep.any() else 0.0


def intra_list_diversity(lists: np.ndarray, features: np.ndarray) -> float:
    """Mean over lists (of ≥ 2 movies) of the mean pairwise cosine distance of their movies' features."""
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.divide(features, norm, out=np.zeros_like(features, dtype=float), where=norm > 0)
    valid = lists >= 0
    x = unit[np.where(valid, lists, 0)] * valid[..., None]  # (users, n, d), padding → zero vectors
    sim = np.einsum("und,umd->unm", x, x)
    k = valid.sum(axis=1)
    pairs = k * (k - 1)  # ordered pairs, i ≠ j
    diag = np.einsum("unn->u", sim)
    dist = (pairs - (sim.sum(axis=(1, 2)) - diag))
    keep = pairs > 0
    return float((dist[keep] / pairs[keep]).mean()) if keep.any() else 0.0


def mean_true_rating(lists: np.ndarray, true: np.ndarray) -> float:
    """Mean over users of the mean true rating of their listed movies; ``true`` is (users, movies)."""
    valid = lists >= 0
    rows = np.arange(len(lists))[:, None]
    values = np.where(valid, true[rows, np.where(valid, lists, 0)], 0.0)
    count = valid.sum(axis=1)
    keep = count > 0
    return float((values.sum(axis=1)[keep] / count[keep]).mean()) if keep.any() else 0.0


def watched_share(lists: np.ndarray, watched: np.ndarray) -> float:
    """Mean over non-empty lists of the share of their movies the user already watched ((users, movies) bool)."""
    valid = lists >= 0
    rows = np.arange(len(lists))[:, None]
    hit = valid & watched[rows, np.where(valid, lists, 0)]
    count = valid.sum(axis=1)
    keep = count > 0
    return float((hit.sum(axis=1)[keep] / count[keep]).mean()) if keep.any() else 0.0


def true_ndcg(lists: np.ndarray, true: np.ndarray, eligible: np.ndarray, n: int = LIST_WIDTH) -> float:
    """Mean NDCG@n with gain ``2^(true − 1) − 1`` (0 for ineligible movies) against the best n eligible."""
    gain = np.where(eligible, np.exp2(true - 1.0) - 1.0, 0.0)
    discount = 1.0 / np.log2(np.arange(2, n + 2))
    top = lists[:, :n]
    valid = top >= 0
    rows = np.arange(len(lists))[:, None]
    got = np.where(valid, gain[rows, np.where(valid, top, 0)], 0.0)
    dcg = (got * discount[: top.shape[1]]).sum(axis=1)
    k = min(n, gain.shape[1])
    best = -np.sort(-gain, axis=1)[:, :k]
    idcg = (best * discount[:k]).sum(axis=1)
    keep = idcg > 0
    return float((dcg[keep] / idcg[keep]).mean()) if keep.any() else 0.0


# ---------------------------------------------------------------------- recommenders


def popularity_lists(rated: np.ndarray, blocked: np.ndarray, n: int = LIST_WIDTH) -> np.ndarray:
    """Most-rated movies first (ties: catalogue position), skipping each user's ``blocked`` ones.

    ``rated`` is the (users, movies) bool matrix of the history; ``blocked`` the same shape (already
    rated, adult for a minor): the list rules our model obeys, so the comparison isolates the ranking.
    Same ranking as `auto_deployment.model.evaluate.popularity_recommender`, which the simulator may
    not import (import-linter layers).
    """
    counts = rated.sum(axis=0)
    order = np.lexsort((np.arange(rated.shape[1]), -counts))
    out = np.full((len(blocked), n), -1, np.int64)
    for u in range(len(blocked)):
        pick = order[~blocked[u, order]][:n]
        out[u, : len(pick)] = pick
    return out


@dataclass
class Arm:
    """One recommender's run through the loop: its own history and its own users' memory."""

    name: str
    ratings: pd.DataFrame
    population: Population
    watched: dict[int, set[str]]  # what each user has watched so far (history and the loop)
    rounds: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LoopConfig:
    rounds: int = 5
    users: int = 1000
    movies: int = 1000
    seed: int = 0
    sample: int | None = None  # users served per round (a fixed panel); None: everyone
    picks: int = 5  # sessions per served user per round
    ratings_per_user: int = 75  # initial history (the world's default density)
    exclude_watched: bool = False  # lists skip watched movies, not only rated ones (what-if)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Loop:
    """The world, the panel of served users and the fixed yardsticks shared by both arms."""

    def __init__(self, cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.world = World.generate(seed=cfg.seed, n_users=cfg.users, n_movies=cfg.movies)
        ratings, watches = self.world.history(n_ratings=cfg.ratings_per_user * cfg.users, seed=cfg.seed)
        self.initial_ratings, self.initial_watches = ratings, watches
        self.user_ids = self.world.users["user_id"].to_numpy(np.int64)
        self.movie_ids = self.world.movies["movie_id"].astype(str).to_numpy()
        n_users = len(self.user_ids)
        rng = np.random.default_rng([cfg.seed, 0x6C6F6F70])
        size = n_users if cfg.sample is None else min(cfg.sample, n_users)
        self.panel = np.sort(rng.choice(n_users, size=size, replace=False)) if size < n_users else np.arange(n_users)
        d = self.world.movie_factors.shape[1]
        self.features = np.hstack([self.world.movie_factors / np.sqrt(d), self.world.movie_genre])
        self.popularity = self._rated(ratings).sum(axis=0) / n_users
        self.true = self._true_rows()
        minor = self.world.users["age"].to_numpy()[self.panel] < 18
        self.minor_adult = minor[:, None] & self.world.movies["adult"].to_numpy(bool)[None, :]

    def _true_rows(self, max_cells: int = 20_000_000) -> np.ndarray:
        """(panel, movies) true ratings: the world's whole matrix when small, else the panel's rows in chunks."""
        if len(self.user_ids) * len(self.movie_ids) <= max_cells:
            return self.world.true_rating_matrix()[self.panel]
        n_movies = len(self.movie_ids)
        chunk = max(1, max_cells // (10 * n_movies))
        rows = []
        for lo in range(0, len(self.panel), chunk):
            users = self.user_ids[self.panel[lo : lo + chunk]]
            flat = self.world.true_ratings(np.repeat(users, n_movies), np.tile(self.movie_ids, len(users)))
            rows.append(flat.reshape(len(users), n_movies))
        return np.vstack(rows)

    def _rated(self, ratings: pd.DataFrame) -> np.ndarray:
        """(all users, movies) bool: who rated what in ``ratings``."""
        u = pd.Categorical(ratings["user_id"].astype("int64"), categories=self.user_ids).codes
        m = pd.Categorical(ratings["movie_id"].astype(str), categories=self.movie_ids).codes
        out = np.zeros((len(self.user_ids), len(self.movie_ids)), bool)
        ok = (u >= 0) & (m >= 0)
        out[u[ok], m[ok]] = True
        return out

    def new_arm(self, name: str) -> Arm:
        seen: dict[int, set[str]] = {}
        for user, movie in zip(self.initial_watches["user_id"], self.initial_watches["movie_id"], strict=True):
            seen.setdefault(int(user), set()).add(str(movie))
        # the population must know what each user already watched in the history, so nobody watches twice
        population = Population(self.world, seed=self.cfg.seed, _watched={u: set(s) for u, s in seen.items()})
        return Arm(name, self.initial_ratings.copy(), population, seen)

    def watched_mask(self, arm: Arm) -> np.ndarray:
        """(panel, movies) bool: what each panel user has watched so far."""
        index = pd.Index(self.movie_ids)
        out = np.zeros((len(self.panel), len(self.movie_ids)), bool)
        for row, u in enumerate(self.panel):
            seen = arm.watched.get(int(self.user_ids[u]))
            if seen:
                out[row, index.get_indexer(list(seen))] = True
        return out

    def lists(self, arm: Arm, rated: np.ndarray, watched: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The panel's lists as (panel, 20) movie indices, and what training said."""
        if arm.name == "popularity":
            blocked = rated[self.panel] | self.minor_adult | (watched if self.cfg.exclude_watched else False)
            return popularity_lists(rated, blocked), {"algorithm": "popularity"}
        started = time.perf_counter()
        model = Recommender.train(arm.ratings, self.world.users, self.world.movies)
        info = {"algorithm": model.algorithm, "train_seconds": round(time.perf_counter() - started, 3)}
        index = {m: j for j, m in enumerate(self.movie_ids)}
        out = np.full((len(self.panel), LIST_WIDTH), -1, np.int64)
        for row, u in enumerate(self.panel):
            if self.cfg.exclude_watched:
                wide = model.recommend(int(self.user_ids[u]), LIST_WIDTH + int(watched[row].sum()))
                movies = [m for m in wide if not watched[row, index[m]]][:LIST_WIDTH]
            else:
                movies = model.recommend(int(self.user_ids[u]), LIST_WIDTH)
            out[row, : len(movies)] = [index[m] for m in movies]
        return out, info

    def step(self, arm: Arm, r: int) -> None:
        """One round: train, serve, measure the lists, let users watch and rate, grow the history."""
        rated = self._rated(arm.ratings)
        watched = self.watched_mask(arm)
        lists, info = self.lists(arm, rated, watched)
        n_movies = len(self.movie_ids)
        eligible = ~(watched | rated[self.panel] | self.minor_adult)
        counts = exposure(lists, n_movies)
        row: dict[str, Any] = {
            "round": r,
            "exposure_gini": gini(counts),
            "coverage": coverage(lists, n_movies),
            "mean_list_popularity": mean_list_popularity(lists, self.popularity),
            "diversity": intra_list_diversity(lists, self.features),
            "mean_true_rating": mean_true_rating(lists, self.true),
            "ndcg": true_ndcg(lists, self.true, eligible),
            "history_gini": gini(rated.sum(axis=0)),
            "history_ratings": len(arm.ratings),
            **info,
        }
        row["watched_share"] = watched_share(lists, watched)
        new, sessions, taken = self.react(arm, lists, r)
        row["take_rate"] = taken / sessions if sessions else 0.0
        row["sessions"] = sessions
        row["new_ratings"] = len(new)
        row["exposure"] = counts.tolist()
        arm.rounds.append(row)
        arm.ratings = pd.concat([arm.ratings, new], ignore_index=True)

    def react(self, arm: Arm, lists: np.ndarray, r: int) -> tuple[pd.DataFrame, int, int]:
        """Each panel user's ``picks`` sessions with their list: (new ratings, sessions, taken from the list)."""
        picks, n_users = self.cfg.picks, len(self.user_ids)
        base = self.world.start_time + self.world.period_days * 86_400 + r * 86_400
        rows, sessions, taken = [], 0, 0
        for row, u in enumerate(self.panel):
            user = int(self.user_ids[u])
            shown = tuple(self.movie_ids[j] for j in lists[row] if j >= 0)
            for k in range(picks):
                session = (r * n_users + int(u)) * picks + k  # the same numbers in both arms
                reaction = arm.population.react(session, user, shown)
                if reaction is None:
                    continue
                sessions += 1
                movie, _minutes, rating, recommended = reaction
                arm.watched.setdefault(user, set()).add(movie)
                taken += int(recommended)
                if rating is not None:
                    rows.append((user, movie, float(rating), base + int(u) * picks + k))
        new = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
        return new.astype({"user_id": "int64", "movie_id": str, "timestamp": "int64"}), sessions, taken


def run(cfg: LoopConfig, progress: bool | None = None) -> dict[str, Any]:
    """Both arms through ``cfg.rounds`` rounds; the report as a dict (see `write_report`)."""
    started = time.perf_counter()
    loop = Loop(cfg)
    arms = {name: loop.new_arm(name) for name in ARMS}
    log.info("feedback loop started", extra=kv(users=cfg.users, movies=cfg.movies, panel=len(loop.panel),
                                               rounds=cfg.rounds, history=len(loop.initial_ratings)))
    disable = None if progress is None else not progress
    with tqdm(total=cfg.rounds * len(arms), desc="feedback loop", unit="step", disable=disable) as bar:
        for r in range(cfg.rounds):
            for arm in arms.values():
                bar.set_postfix_str(f"round {r} {arm.name}")
                loop.step(arm, r)
                row = arm.rounds[-1]
                log.info("round done", extra=kv(arm=arm.name, round=r, gini=row["exposure_gini"],
                                                coverage=row["coverage"], ndcg=row["ndcg"],
                                                history=row["history_ratings"]))
                bar.update()
    report = {
        "config": cfg.as_dict(),
        "panel": len(loop.panel),
        "catalogue": len(loop.movie_ids),
        "list_size": LIST_WIDTH,
        "initial_ratings": len(loop.initial_ratings),
        "metrics": {k: {"label": label, "higher": higher} for k, (label, higher) in METRICS.items()},
        "gini_formula": "sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), over every catalogue movie",
        "arms": {name: arm.rounds for name, arm in arms.items()},
        "seconds": round(time.perf_counter() - started, 3),
        "command": command(cfg),
    }
    report["verdict"] = verdict(report)
    log.info("feedback loop done", extra=kv(seconds=report["seconds"], verdict=report["verdict"]["summary"]))
    return report


def command(cfg: LoopConfig) -> str:
    """The command line that re-runs this loop."""
    parts = ["python -m simulator loop", f"--rounds {cfg.rounds}", f"--users {cfg.users}", f"--movies {cfg.movies}",
             f"--seed {cfg.seed}", f"--picks {cfg.picks}", f"--ratings-per-user {cfg.ratings_per_user}"]
    if cfg.sample is not None:
        parts.append(f"--sample {cfg.sample}")
    if cfg.exclude_watched:
        parts.append("--exclude-watched")
    return " ".join(parts)


def _trend(first: float, last: float, tolerance: float) -> str:
    if last > first + tolerance:
        return "up"
    if last < first - tolerance:
        return "down"
    return "flat"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Does our model narrow or widen exposure over the rounds, and beside popularity? (in words and flags)."""
    out: dict[str, Any] = {}
    for name, rounds in report["arms"].items():
        g0, g1 = rounds[0]["exposure_gini"], rounds[-1]["exposure_gini"]
        c0, c1 = rounds[0]["coverage"], rounds[-1]["coverage"]
        gini_trend, cov_trend = _trend(g0, g1, 0.005), _trend(c0, c1, 0.005)
        # narrows: exposure concentrates or coverage shrinks, and the other does not say the opposite
        if (gini_trend == "up" and cov_trend != "up") or (cov_trend == "down" and gini_trend != "down"):
            way = "narrows"
        elif (gini_trend == "down" and cov_trend != "down") or (cov_trend == "up" and gini_trend != "up"):
            way = "widens"
        else:
            way = "holds"
        out[name] = {"exposure": way, "gini": [g0, g1], "coverage": [c0, c1]}
    ours, pop = report["arms"]["ours"][-1], report["arms"]["popularity"][-1]
    wider = ours["coverage"] > pop["coverage"] and ours["exposure_gini"] < pop["exposure_gini"]
    out["ours_wider_than_popularity"] = bool(wider)
    n = len(report["arms"]["ours"])
    out["summary"] = (
        f"over {n} rounds our model {out['ours']['exposure']} exposure (Gini {_span(out['ours']['gini'])}, "
        f"coverage {_span(out['ours']['coverage'])}); popularity {out['popularity']['exposure']} it "
        f"(Gini {_span(out['popularity']['gini'])}, coverage {_span(out['popularity']['coverage'])}); "
        f"in the last round our lists are {'wider' if wider else 'not wider'} than popularity's"
    )
    return out


def _span(pair: Sequence[float]) -> str:
    return f"{pair[0]:.3f} → {pair[1]:.3f}"


# ---------------------------------------------------------------------- report


def _svg(draw: Callable[[Any], None], width: float = 5.2, height: float = 3.0) -> str:
    """One matplotlib figure (Agg) as inline SVG markup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    plt.rcParams["svg.hashsalt"] = "feedback-loop"  # stable ids: equal inputs give equal files
    fig, ax = plt.subplots(figsize=(width, height))
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    finally:
        plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _metric_plot(report: dict[str, Any], key: str) -> str:
    from matplotlib.ticker import MaxNLocator
    def draw(ax: Any) -> None:
        for name, style in (("ours", "o-"), ("popularity", "s--")):
            rounds = report["arms"][name]
            ax.plot([r["round"] for r in rounds], [r[key] for r in rounds], style, label=name)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(report["metrics"][key]["label"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return _svg(draw)


def _lorenz_plot(report: dict[str, Any]) -> str:
    def draw(ax: Any) -> None:
        for name, color in (("ours", "C0"), ("popularity", "C1")):
            rounds = report["arms"][name]
            for row, style in ((rounds[0], ":"), (rounds[-1], "-")):
                x = np.sort(np.asarray(row["exposure"], float))
                cum = np.concatenate([[0.0], np.cumsum(x) / max(x.sum(), 1.0)])
                share = np.linspace(0.0, 1.0, len(cum))
                ax.plot(share, cum, style, color=color, label=f"{name}, round {row['round']}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set_xlabel("share of movies (least shown first)")
        ax.set_ylabel("share of exposure")
        ax.set_title("Lorenz curve of exposure", fontsize=9)
        ax.legend(fontsize=7)

    return _svg(draw, 5.2, 3.6)


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rounds × metrics, ours beside popularity: what the HTML and the README table show."""
    rows = []
    for ours, pop in zip(report["arms"]["ours"], report["arms"]["popularity"], strict=True):
        rows.append({"round": ours["round"], "values": [(ours[k], pop[k]) for k in METRICS]})
    return rows


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page: the verdict, a table and inline SVG plots."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    plots = [{"key": k, "svg": _metric_plot(report, k)} for k in METRICS]
    return template.render(
        report=report, metrics=METRICS, rows=table_rows(report), plots=plots, lorenz=_lorenz_plot(report),
        config_json=json.dumps(report["config"]), markup=jinja2.filters.Markup,
    )


def markdown_table(report: dict[str, Any]) -> str:
    """The rounds × metrics table in Markdown (ours / popularity per cell), for the README."""
    keys = list(METRICS)
    head = "| round | " + " | ".join(keys) + " |"
    rule = "|---:|" + "---:|" * len(keys)
    lines = [head, rule]
    for row in table_rows(report):
        cells = [f"{a:.3f} / {b:.3f}" for a, b in row["values"]]
        lines.append(f"| {row['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``feedback_loop.json`` and ``feedback_loop.html`` in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "feedback_loop.json", out / "feedback_loop.html"
    write_text_atomic(json_path, json.dumps(report, indent=1) + "\n")
    write_text_atomic(html_path, render_html(report))
    return json_path, html_path


# ---------------------------------------------------------------------- CLI (python -m simulator loop)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LoopConfig()
    parser.add_argument("--rounds", type=int, default=d.rounds, help="serve → watch/rate → retrain rounds")
    parser.add_argument("--users", type=int, default=d.users, help="users of the generated world")
    parser.add_argument("--movies", type=int, default=d.movies, help="movies of the generated world")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the world, its history and every choice")
    parser.add_argument("--sample", type=int, default=None, help="users served each round (a fixed panel; "
                        "default: everyone)")
    parser.add_argument("--picks", type=int, default=d.picks, help="sessions per served user per round")
    parser.add_argument("--ratings-per-user", type=int, default=d.ratings_per_user,
                        help="ratings per user in the initial history")
    parser.add_argument("--exclude-watched", action="store_true",
                        help="what-if: lists skip movies the user watched, not only those they rated")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for feedback_loop.json/.html")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")


def run_cli(args: argparse.Namespace) -> int:
    """`python -m simulator loop ...`: run, write the report, print the verdict (and the table)."""
    if args.rounds < 1 or args.users < 2 or args.movies < LIST_WIDTH or args.picks < 1:
        print("simulator loop: need --rounds ≥ 1, --users ≥ 2, --movies ≥ 20, --picks ≥ 1", file=sys.stderr)
        return 2
    setup_logging()
    cfg = LoopConfig(rounds=args.rounds, users=args.users, movies=args.movies, seed=args.seed,
                     sample=args.sample, picks=args.picks, ratings_per_user=args.ratings_per_user,
                     exclude_watched=args.exclude_watched)
    report = run(cfg)
    json_path, html_path = write_report(report, args.out)
    print(report["verdict"]["summary"])
    if args.markdown:
        print(markdown_table(report))
    print(f"wrote {json_path} and {html_path}")
    return 0

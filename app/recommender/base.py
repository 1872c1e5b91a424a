"""The base every recommendation algorithm is built on, the way Surprise's ``AlgoBase`` is.

An algorithm (a registered subclass) only holds its fitted arrays and answers two questions about
*inner* ids: ``estimate(u, i)`` (a rating) and ``score(u)`` (how much it recommends each movie to a
warm user; > 0 means "recommend"). Everything else is decided here, once, for every algorithm:

* raw ↔ inner ids, and what an unknown user or movie means;
* the cold/warm choice: a known user with at least ``cold_min_ratings`` ratings is warm and gets the
  algorithm's scores; anyone else gets the cold-start ranking for what we know of them (age and
  gender from the users table, also for users who rated nothing), and a user we know nothing about
  gets `fallback`;
* the rules every list obeys (`_finish`): no adult movie for users under 18 (unknown age counts as
  under 18), nothing the user already rated, exactly ``n`` movies when ``n`` eligible exist,
  deterministic order (score, then catalogue position; the cold-start order fills what scores leave);
* the lists of every known user materialised at training (``top_lists``), so serving a known user is
  one row lookup; both paths give the same lists (tested);
* training (`train`: the algorithm's fitter is imported only then, so serving never imports a
  training library) and the bundle (`save`/`load` through `app.contracts.bundle`). ``metadata.json``
  names the ``algorithm``; `load` finds its class in `ALGORITHMS`, which each algorithm's module
  fills by decorating its class with `register`.

Bundle files: ``arrays.npz`` (the base's arrays and the algorithm's `arrays`), ``ids.json`` (movie
ids), ``metadata.json``, the algorithm's own files (`write_files`), and ``checksums.json`` listing them
all. An array of at least ``NPY_MIN_BYTES`` is stored instead as its own ``<name>.npy`` (metadata
``npy_arrays`` names them) and memory-mapped read-only at load, so the workers and slots serving one
version share its pages and loading a million-user bundle reads almost nothing. Raw user ids are found
with a binary search over a sorted copy (``user_index``: inner ids in raw-id order), never a per-user
Python dict. Bundles written before (user ids and profile-only users in ``ids.json``) still load.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import numpy as np
from scipy import sparse

from app.clock import now_iso
from app.contracts import bundle
from app.contracts.bundle import BundleError
from app.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from app.logs import kv
from app.recommender import cold_start

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LIST_WIDTH = 20  # the lists materialised at training: what the server asks for
RATING_SCALE = (1.0, 5.0)
ARRAYS = "arrays.npz"
IDS = "ids.json"
NPY_MIN_BYTES = 1 << 20  # arrays this large get their own memory-mapped .npy; small ones stay in arrays.npz
DEFAULT_ALGORITHM = "user_knn"
# Above this many users `train` (no algorithm named) fits SCALABLE_ALGORITHM instead of the exact one. Surprise's
# user-user fit holds a dense n × n float64 plus ~5 temporaries (≈ 48·n² bytes): ~20,000 users fill 24 GiB and
# 10,000 users take ~5 GB, so the exact path stops well before memory does. A `train` keyword overrides it.
EXACT_MAX_USERS = 10_000
SCALABLE_ALGORITHM = "user_knn_sparse"

WARM, COLD, FALLBACK = "warm", "cold", "fallback"  # how a list was made
Profile = tuple[float, str]  # (age or NaN, 'M' / 'F' / '')
NO_PROFILE: Profile = (float("nan"), "")

ALGORITHMS: dict[str, type[Recommender]] = {}  # metadata.json's `algorithm` → class
_ALIASES: dict[str, str] = {}  # names older bundles wrote → registry key

R = TypeVar("R", bound="Recommender")


class Recommendation(NamedTuple):
    """A list and how it was made, so a caller needs no second lookup to say which."""

    movies: list[str]
    how: str  # WARM (the algorithm's scores), COLD (cold-start for a profile), FALLBACK (nothing known)

    @property
    def cold(self) -> bool:
        return self.how != WARM


@dataclass(frozen=True)
class Fit:
    """What an algorithm's training adapter hands the base: id maps, the ratings, its own fields."""

    user_ids: np.ndarray  # raw user ids (int64), position = inner id
    movie_ids: np.ndarray  # raw movie ids (str), position = inner id (ties in every list break on it)
    user_items: sparse.csr_matrix  # user × item ratings
    global_mean: float
    train_size: int
    fields: dict[str, Any]  # the algorithm's dataclass fields


def register(name: str, *, fitter: str, aliases: Iterable[str] = ()) -> Callable[[type[R]], type[R]]:
    """Class decorator: bundles whose metadata names `name` (or an alias) load as this class.

    `fitter` is ``"module:function"``, imported only by `train`; it takes the ratings frame and the
    parameters and returns a `Fit`.
    """

    def add(cls: type[R]) -> type[R]:
        known = ALGORITHMS.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"algorithm {name!r} is already registered by {known.__qualname__}")
        cls.algorithm = name
        cls.fitter = fitter
        ALGORITHMS[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name
        return cls

    return add


def algorithm_class(name: object, where: str = "model") -> type[Recommender]:
    """The registered class for `name`; `BundleError` saying which names this code knows otherwise."""
    cls = ALGORITHMS.get(_ALIASES.get(name, name)) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(ALGORITHMS)) or "none"
        raise BundleError(f"{where}: unknown algorithm {name!r} (this code knows: {known})")
    return cls


@dataclass(kw_only=True, eq=False)
class Recommender:
    """A trained model: arrays only (no pickled objects), so loading a bundle is safe and fast."""

    algorithm: ClassVar[str] = ""  # set by `register`
    fitter: ClassVar[str] = ""  # "module:function", set by `register`
    description: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Any]] = {}  # the algorithm's own parameters and their defaults
    FILES: ClassVar[tuple[str, ...]] = ()  # the algorithm's own files beside arrays.npz

    user_ids: np.ndarray  # raw user ids (int64), position = inner id
    movie_ids: np.ndarray  # raw movie ids (str), position = inner id
    user_items: sparse.csr_matrix  # user × item ratings: what each user rated, how many
    adult: np.ndarray  # bool per movie
    user_age: np.ndarray  # float per inner user (NaN unknown)
    user_gender: np.ndarray  # 'M' / 'F' / '' per inner user
    cold_order: dict[str, np.ndarray]  # gender key ('M', 'F', '') → movie inner ids, best first
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Attributes of users the training set knows but who rated nothing (cold users with a profile): given as
    # {raw id: profile}, kept as (sorted raw ids, age, gender) arrays (`extra_arrays`).
    extra_users: Any = field(default_factory=dict)
    # user × LIST_WIDTH movie inner ids, best first, -1 padded (None: bundles from before it existed)
    top_lists: np.ndarray | None = None

    # inner user ids in ascending raw-id order, and the raw ids in that order (`_inner_user` searches them);
    # computed when not given, memory-mapped from large bundles
    user_index: np.ndarray | None = None
    sorted_user_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.user_index is None or self.sorted_user_ids is None:
            self.user_index = np.argsort(self.user_ids, kind="stable")
            self.sorted_user_ids = np.asarray(self.user_ids, np.int64)[self.user_index]
        self._iid = {str(m): i for i, m in enumerate(self.movie_ids)}  # the catalogue only, not per user
        if isinstance(self.extra_users, dict):
            self.extra_users = extra_arrays(self.extra_users)
        self._movie_strs = [str(m) for m in self.movie_ids]  # indexing a numpy str array per item is slow

    def _inner_user(self, user_id: int) -> int | None:
        """Inner id of a raw user id by binary search (no per-user Python object), None if unknown."""
        return _find(self.sorted_user_ids, user_id, self.user_index)

    def _extra_profile(self, user_id: int) -> Profile | None:
        ids, age, gender = self.extra_users
        j = _find(ids, user_id)
        return None if j is None else (float(age[j]), str(gender[j]))

    # ------------------------------------------------------------------ what an algorithm implements
    def estimate(self, u: int | None, i: int | None) -> float:
        """Rating estimate for inner ids (None: unknown); the base clips it to the scale."""
        raise NotImplementedError

    def score(self, u: int) -> np.ndarray:
        """How much to recommend each movie (by inner id) to warm inner user `u`; ≤ 0: no opinion."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The algorithm's arrays, stored in ``arrays.npz`` beside the base's."""
        return {}

    def write_files(self, directory: Path) -> None:
        """Write the algorithm's own files, those named in `FILES`, into `directory`."""

    @classmethod
    def read_fields(
        cls, arrays: Mapping[str, np.ndarray], directory: Path, n_users: int, n_items: int, mmap: bool
    ) -> dict[str, Any]:
        """The algorithm's dataclass fields from ``arrays.npz`` and its own files."""
        return {}

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Every parameter this algorithm takes: its own, then the shared cold-start ones."""
        return {**cls.PARAMS, **cold_start.PARAMS}

    # ------------------------------------------------------------------ predict
    def predict(self, user_id: int, movie_id: str) -> float:
        """Rating estimate in [1, 5] (unknown user or movie: the algorithm's baseline for what is known)."""
        u = self._inner_user(user_id)
        i = self._iid.get(str(movie_id))
        return float(np.clip(self.estimate(u, i), *RATING_SCALE))

    # ------------------------------------------------------------------ recommend
    def recommend(self, user_id: int, n: int = LIST_WIDTH) -> list[str]:
        """Up to `n` movie ids, best first (exactly `n` whenever `n` eligible movies exist)."""
        return self.explain(user_id, n).movies

    def explain(self, user_id: int, n: int = LIST_WIDTH) -> Recommendation:
        """The list and how it was made (warm, cold, fallback), in one lookup."""
        u = self._inner_user(user_id)
        strs = self._movie_strs
        if u is None:
            profile = self._extra_profile(user_id)
            if profile is None:
                return Recommendation(self.fallback(n), FALLBACK)
            return Recommendation([strs[i] for i in self._finish(profile, None, None, n)], COLD)
        how = self._how(u)
        if self.top_lists is not None and n <= self.top_lists.shape[1]:
            return Recommendation([strs[i] for i in self.top_lists[u, :n].tolist() if i >= 0], how)
        scores = self.score(u) if how == WARM else None
        return Recommendation([strs[i] for i in self._finish(self._profile(u), u, scores, n)], how)

    def fallback(self, n: int = LIST_WIDTH) -> list[str]:
        """The list for a user we know nothing about: everyone's cold-start order, adult-free."""
        return [self._movie_strs[i] for i in self._finish(NO_PROFILE, None, None, n)]

    def is_cold(self, user_id: int) -> bool:
        """Unknown, or fewer ratings than `cold_min_ratings`: the cold-start ranking serves this user."""
        u = self._inner_user(user_id)
        return u is None or self._how(u) != WARM

    def _how(self, u: int) -> str:
        indptr = self.user_items.indptr
        return COLD if indptr[u + 1] - indptr[u] < int(self.params["cold_min_ratings"]) else WARM

    def _profile(self, u: int) -> Profile:
        return float(self.user_age[u]), str(self.user_gender[u])

    def _finish(self, profile: Profile, u: int | None, scores: np.ndarray | None, n: int) -> list[int]:
        """The rules of every list (adult filter, nothing rated, `n` long, deterministic) → movie inner ids."""
        age, gender = profile
        blocked = self.adult.copy() if not (age >= 18) else np.zeros(len(self.movie_ids), bool)  # NaN age: a minor
        if u is not None:
            blocked[self.user_items.indices[self.user_items.indptr[u] : self.user_items.indptr[u + 1]]] = True
        chosen: list[int] = []
        if scores is not None:
            cand = np.flatnonzero((scores > 0) & ~blocked)
            if len(cand) > n:  # only the n best (and whatever ties the n-th) need the full sort
                s = scores[cand]
                cand = cand[s >= np.partition(s, len(s) - n)[len(s) - n]]
            if len(cand):
                # best score first, ties broken by catalogue position: deterministic
                cand = cand[np.lexsort((cand, -scores[cand]))][:n]
                chosen = cand.tolist()
                blocked[cand] = True
        if len(chosen) < n:
            order = self.cold_order.get(gender, self.cold_order[""])
            rest = order[~blocked[order]][: n - len(chosen)]
            chosen.extend(rest.tolist())
        return chosen

    def _materialise(self, width: int) -> np.ndarray:
        """Every known user's top `width` by the computed path (so both paths agree by construction)."""
        out = np.full((len(self.user_ids), width), -1, np.int32)
        for u in range(len(self.user_ids)):
            scores = self.score(u) if self._how(u) == WARM else None
            chosen = self._finish(self._profile(u), u, scores, width)
            out[u, : len(chosen)] = chosen
        return out

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        ratings: pd.DataFrame,
        users: pd.DataFrame | None = None,
        movies: pd.DataFrame | None = None,
        *,
        algorithm: str | None = None,
        materialise: bool = True,
        exact_max_users: int = EXACT_MAX_USERS,
        **params: Any,
    ) -> Recommender:
        """Fit `algorithm` (default: this class's, else by size) on every rating given.

        With no algorithm named, more than `exact_max_users` distinct users pick `SCALABLE_ALGORITHM`
        (memory n·k) and fewer the exact `DEFAULT_ALGORITHM` (memory n²); the bundle's ``algorithm`` says
        which. The gate's RMSE comes from `auto_deployment.model.evaluate`. `materialise=False` skips
        storing the top lists, for a model that only predicts ratings.
        """
        from app.recommender import profiles

        name = algorithm or cls.algorithm
        if not name:
            big = ratings["user_id"].nunique() > exact_max_users
            name = SCALABLE_ALGORITHM if big else DEFAULT_ALGORITHM
            if not big:  # parameters only the scalable path takes mean nothing to the exact one
                exact = algorithm_class(DEFAULT_ALGORITHM, "train").default_params()
                scalable = algorithm_class(SCALABLE_ALGORITHM, "train").default_params()
                params = {k: v for k, v in params.items() if k in exact or k not in scalable}
        algo = algorithm_class(name, "train")
        defaults = algo.default_params()
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(f"unknown model parameters: {sorted(unknown)}")
        if ratings.empty:
            raise ValueError("cannot train on an empty ratings table")
        p = {**defaults, **params}
        frame = ratings[["user_id", "movie_id", "rating"]].copy()
        frame["user_id"] = frame["user_id"].astype("int64")
        frame["movie_id"] = frame["movie_id"].astype(str)
        frame["rating"] = frame["rating"].astype(float)

        module, _, function = algo.fitter.partition(":")
        fit: Fit = getattr(importlib.import_module(module), function)(frame, p)

        movie_attrs = profiles.movie_attributes(movies, fit.movie_ids)
        age, gender, extra = profiles.user_attributes(users, fit.user_ids)
        model = algo(
            user_ids=fit.user_ids,
            movie_ids=fit.movie_ids,
            user_items=fit.user_items,
            adult=movie_attrs["adult"].to_numpy(bool),
            user_age=age,
            user_gender=gender,
            cold_order=cold_start.orders(fit.user_items, gender, movie_attrs, fit.global_mean, p),
            params=dict(p),
            metadata={
                "algorithm": algo.algorithm,
                "description": algo.description,
                "params": dict(p),
                "trained_at": now_iso(),
                "train_size": int(fit.train_size),
                "n_users": len(fit.user_ids),
                "n_movies": len(fit.movie_ids),
                "exact_max_users": int(exact_max_users),  # the size rule that chose `algorithm` (if not named)
                "code_commit": _code_commit(),
            },
            extra_users=extra,
            **fit.fields,
        )
        if materialise:
            model.top_lists = model._materialise(LIST_WIDTH)
        log.debug("model trained", extra=kv(algorithm=algo.algorithm, users=len(fit.user_ids),
                                            movies=len(fit.movie_ids), ratings=fit.train_size))
        return model

    # ------------------------------------------------------------------ bundle
    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "dev"))

    def save(self, directory: str | Path) -> Path:
        """Write a self-describing bundle: every file lands atomically, ``checksums.json`` last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = {
            "adult": self.adult,
            "user_age": self.user_age,
            "user_gender": self.user_gender.astype("U1"),
            **csr_arrays("user_items", self.user_items),
            **{f"cold_{k or 'none'}": v for k, v in self.cold_order.items()},
            **({} if self.top_lists is None else {"top_lists": self.top_lists}),
        }
        ex_ids, ex_age, ex_gender = self.extra_users
        base.update(user_ids=np.asarray(self.user_ids, np.int64), user_index=np.asarray(self.user_index, np.int64),
                    sorted_user_ids=np.asarray(self.sorted_user_ids, np.int64),
                    extra_user_ids=ex_ids, extra_user_age=ex_age, extra_user_gender=ex_gender.astype("U1"))
        own = self.arrays()
        clash = set(base) & set(own)
        if clash:
            raise ValueError(f"{type(self).__name__} arrays shadow the base's: {sorted(clash)}")
        every = {**base, **own}
        big = sorted(k for k, v in every.items() if np.asarray(v).nbytes >= NPY_MIN_BYTES)
        for name in big:  # one file each, so `load` can memory-map it
            write_bytes_atomic(directory / f"{name}.npy",
                               lambda fh, a=every[name]: np.save(fh, np.ascontiguousarray(a), allow_pickle=False))
        write_bytes_atomic(directory / ARRAYS, lambda fh: np.savez(fh, **{k: v for k, v in every.items()
                                                                            if k not in big}))
        write_text_atomic(directory / IDS, json.dumps({"movie_ids": self.movie_ids.tolist()}))
        self.write_files(directory)
        write_json_atomic(directory / bundle.METADATA, {**self.metadata, "algorithm": self.algorithm,
                                                         "params": self.params, bundle.NPY_ARRAYS: big})
        try:
            before = set(bundle.listed_files(directory))
        except BundleError:
            before = set()
        for stale in before - {ARRAYS, IDS, bundle.METADATA, *self.FILES, *(f"{n}.npy" for n in big)}:
            (directory / stale).unlink(missing_ok=True)  # saving over an older bundle: its extra arrays go
        bundle.write_checksums(directory, (ARRAYS, IDS, *self.FILES, *(f"{n}.npy" for n in big)))
        return directory

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True, mmap: bool = True) -> Recommender:
        """Load a bundle as the class its metadata names, verifying every checksum first.

        Arrays an algorithm stores in files of its own (the KNN similarity matrix) may be
        memory-mapped read-only, so the workers and slots serving one version share their pages.
        """
        directory = Path(directory)
        meta = bundle.verify(directory, required=(ARRAYS, IDS)) if verify else bundle.read_metadata(directory)
        npy = meta.get(bundle.NPY_ARRAYS, [])
        if not isinstance(npy, list) or not all(isinstance(n, str) and n.isidentifier() for n in npy):
            raise BundleError(f"model bundle {directory}: metadata {bundle.NPY_ARRAYS} is not a list of array names")
        if verify:
            listed = bundle.listed_files(directory)
            missing = [f"{n}.npy" for n in npy if f"{n}.npy" not in listed]
            if missing:
                raise BundleError(f"model bundle {directory} is partial: {missing[0]} not listed in {bundle.CHECKSUMS}")
        algo = algorithm_class(meta.get("algorithm"), f"model bundle {directory}")
        if not issubclass(algo, cls):
            raise BundleError(f"model bundle {directory} holds {algo.algorithm}, not {cls.__name__}")
        if verify:
            listed = bundle.listed_files(directory)
            for name in algo.FILES:
                if name not in listed:
                    raise BundleError(f"model bundle {directory} is partial: {name} not listed in {bundle.CHECKSUMS}")
        try:
            ids = json.loads((directory / IDS).read_text())
            with np.load(directory / ARRAYS, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            for name in npy:
                arrays[name] = np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            if "user_ids" in ids:  # bundles from before: ids and profile-only users in ids.json
                arrays["user_ids"] = np.array(ids["user_ids"], dtype=np.int64)
                extra = extra_arrays({int(k): (float("nan") if a is None else float(a), g)
                                      for k, (a, g) in ids.get("extra_users", {}).items()})
            else:
                extra = (arrays["extra_user_ids"], arrays["extra_user_age"], arrays["extra_user_gender"])
            n_users, n_items = len(arrays["user_ids"]), len(ids["movie_ids"])
            user_index, sorted_ids = arrays.get("user_index"), arrays.get("sorted_user_ids")
            for name, a in (("user_index", user_index), ("sorted_user_ids", sorted_ids)):
                if a is not None and a.shape != (n_users,):
                    raise ValueError(f"{name} has shape {a.shape}, expected ({n_users},)")
            model = algo(
                user_ids=arrays["user_ids"],
                user_index=user_index,
                sorted_user_ids=sorted_ids,
                movie_ids=np.array(ids["movie_ids"], dtype=str),
                user_items=csr_from(arrays, "user_items", (n_users, n_items)),
                adult=arrays["adult"],
                user_age=arrays["user_age"],
                user_gender=arrays["user_gender"],
                cold_order={k[len("cold_") :].replace("none", ""): v for k, v in arrays.items()
                            if k.startswith("cold_")},
                params=meta.get("params", {}),
                metadata=meta,
                extra_users=extra,
                top_lists=arrays.get("top_lists"),
                **algo.read_fields(arrays, directory, n_users, n_items, mmap),
            )
            _check_top_lists(model.top_lists, n_users, n_items)
        except BundleError:
            raise
        except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:  # incl. JSON errors
            raise BundleError(f"model bundle {directory} cannot be read: {exc}") from exc
        log.debug("bundle loaded", extra=kv(bundle=directory, algorithm=algo.algorithm, version=model.version))
        return model


# ---------------------------------------------------------------------- helpers for algorithms
def csr_arrays(name: str, m: sparse.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as three named arrays for the bundle.

    Both index arrays get one dtype, int32 whenever it fits: scipy copies (downcasts) int64 indices it
    could hold in int32, which would undo memory-mapping them.
    """
    small = max(m.nnz, *m.shape) < np.iinfo(np.int32).max
    dtype = np.int32 if small else np.int64
    return {f"{name}_data": m.data, f"{name}_indices": m.indices.astype(dtype, copy=False),
            f"{name}_indptr": m.indptr.astype(dtype, copy=False)}


def extra_arrays(extra: Mapping[int, Profile]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """{raw id: (age, gender)} of profile-only users as (sorted raw ids, ages, genders) arrays."""
    ids = np.array(sorted(extra), dtype=np.int64)
    age = np.array([extra[int(k)][0] for k in ids], dtype=float)
    gender = np.array([extra[int(k)][1] for k in ids], dtype="U1")
    return ids, age, gender


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _find(sorted_ids: np.ndarray, raw: int, positions: np.ndarray | None = None) -> int | None:
    """Position of `raw` in `sorted_ids` (mapped through `positions` when given), None if absent."""
    key = int(raw)
    if not _INT64_MIN <= key <= _INT64_MAX:
        return None
    j = int(np.searchsorted(sorted_ids, key))
    if j >= len(sorted_ids) or sorted_ids[j] != key:
        return None
    return int(positions[j]) if positions is not None else j


def csr_from(arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, int]) -> sparse.csr_matrix:
    return sparse.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
                             shape=shape)


def _check_top_lists(top: np.ndarray | None, n_users: int, n_items: int) -> None:
    if top is None:
        return
    if top.ndim != 2 or len(top) != n_users:
        raise ValueError(f"top_lists has shape {top.shape}, expected ({n_users}, width)")
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"top_lists names movies outside 0..{n_items - 1}")


def _code_commit() -> str:
    env = os.environ.get("MOVIEREC_CODE_COMMIT")
    if env:
        return env
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

"""The seam between the base and its algorithms: the registry, old bundles, and a second algorithm.

``legacy_bundle/`` was written, and ``legacy_expected.json`` recorded, by ``app/model.py`` at commit
9535986 (the single ``Recommender`` class, before the split) trained on `build_catalogue()`. The
split must load that bundle and answer as it did, and training today must give the same answers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from app.contracts.bundle import write_checksums
from app.files import write_bytes_atomic
from app.model import BundleError, Recommender, UserKNN
from app.recommender import base
from app.recommender.base import Fit, register
from tests.model.conftest import ADULT, COLD_MINOR, MINORS, N_MOVIES, PROFILE_ONLY_MINOR

HERE = Path(__file__).parent
LEGACY = HERE / "legacy_bundle"
EXPECTED = json.loads((HERE / "legacy_expected.json").read_text())


def _answers_as_recorded(model: Recommender) -> None:
    for user, movies in EXPECTED["lists"].items():
        assert model.recommend(int(user)) == movies, user
    for user, movies in EXPECTED["long_lists"].items():
        assert model.recommend(int(user), n=len(movies)) == movies, user
    for user, cold in EXPECTED["cold"].items():
        assert model.is_cold(int(user)) == cold, user
    for user, movie, estimate in EXPECTED["estimates"]:
        assert model.predict(user, movie) == pytest.approx(estimate, abs=1e-12), (user, movie)


# ---------------------------------------------------------------------- bundles from before the split
def test_a_bundle_written_before_the_split_loads_and_answers_as_it_did():
    model = Recommender.load(LEGACY)
    assert type(model) is UserKNN
    _answers_as_recorded(model)


def test_training_today_gives_the_lists_and_estimates_of_the_code_before_the_split(model):
    _answers_as_recorded(model)  # `model` is trained by today's code on the same catalogue


def test_a_legacy_bundle_saved_again_is_named_by_its_registry_key(tmp_path):
    again = Recommender.load(Recommender.load(LEGACY).save(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "metadata.json").read_text())["algorithm"] == "user_knn"
    _answers_as_recorded(again)


# ---------------------------------------------------------------------- the registry refuses what it lacks
def _rename_algorithm(bundle: Path, name: Any) -> None:
    """Rewrite metadata.json's algorithm and re-checksum, so only the registry can object."""
    meta = json.loads((bundle / "metadata.json").read_text())
    if name is None:
        meta.pop("algorithm")
    else:
        meta["algorithm"] = name
    (bundle / "metadata.json").write_text(json.dumps(meta))
    write_checksums(bundle, [n for n in json.loads((bundle / "checksums.json").read_text()) if n != "metadata.json"])


@pytest.mark.parametrize("name", ["no-such-algorithm", None, 42])
def test_a_bundle_of_an_unknown_algorithm_is_refused_naming_it_and_the_known_ones(tmp_path, name):
    bundle = shutil.copytree(LEGACY, tmp_path / "b")
    _rename_algorithm(bundle, name)
    with pytest.raises(BundleError, match=rf"b: unknown algorithm {name!r} \(this code knows: .*user_knn"):
        Recommender.load(bundle)


def test_training_an_unknown_algorithm_is_refused(catalogue):
    with pytest.raises(ValueError, match="unknown algorithm 'no-such-algorithm'"):
        Recommender.train(*catalogue, algorithm="no-such-algorithm")


def test_an_algorithm_name_cannot_be_taken_twice(monkeypatch):
    monkeypatch.setattr(base, "ALGORITHMS", dict(base.ALGORITHMS))
    with pytest.raises(ValueError, match="already registered"):
        register("user_knn", fitter="x:y")(MostRated)


# ---------------------------------------------------------------------- a second algorithm through the base
@dataclasses.dataclass(kw_only=True, eq=False)
class MostRated(Recommender):
    """A toy second algorithm: scores a movie by how many users rated it, estimates its mean rating."""

    PARAMS: ClassVar[dict[str, Any]] = {"min_raters": 2}
    FILES: ClassVar[tuple[str, ...]] = ("most_rated.json",)

    raters: np.ndarray  # per movie
    mean: np.ndarray  # per movie
    global_mean: float
    note: str = ""  # kept in a file of its own, to exercise the algorithm's own files

    def estimate(self, u: int | None, i: int | None) -> float:
        return self.global_mean if i is None else float(self.mean[i])

    def score(self, u: int) -> np.ndarray:
        return np.where(self.raters >= int(self.params["min_raters"]), self.raters, 0.0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"raters": self.raters, "mean": self.mean, "global_mean": np.array([self.global_mean])}

    def write_files(self, directory: Path) -> None:
        write_bytes_atomic(directory / "most_rated.json", lambda fh: fh.write(json.dumps({"note": self.note}).encode()))

    @classmethod
    def read_fields(cls, arrays, directory: Path, n_users: int, n_items: int, mmap: bool) -> dict[str, Any]:
        note = json.loads((directory / "most_rated.json").read_text())["note"]
        return {"raters": arrays["raters"], "mean": arrays["mean"], "global_mean": float(arrays["global_mean"][0]),
                "note": note}


def fit_most_rated(frame: pd.DataFrame, p: dict[str, Any]) -> Fit:
    """The toy's training adapter (imported by `Recommender.train` through the registry's fitter path)."""
    users, user_ids = pd.factorize(frame["user_id"])
    items, movie_ids = pd.factorize(frame["movie_id"])
    user_items = sparse.csr_matrix((frame["rating"].to_numpy(float), (users, items)),
                                   shape=(len(user_ids), len(movie_ids)))
    raters = np.bincount(items, minlength=len(movie_ids)).astype(float)
    sums = np.bincount(items, weights=frame["rating"].to_numpy(float), minlength=len(movie_ids))
    gm = float(frame["rating"].mean())
    return Fit(
        user_ids=np.asarray(user_ids, np.int64),
        movie_ids=np.asarray(movie_ids, str),
        user_items=user_items,
        global_mean=gm,
        train_size=len(frame),
        fields={"raters": raters, "mean": sums / raters, "global_mean": gm, "note": "toy"},
    )


@pytest.fixture
def most_rated(monkeypatch) -> type[MostRated]:
    """Register the toy for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(base, "ALGORITHMS", dict(base.ALGORITHMS))
    return register("most_rated_toy", fitter=f"{__name__}:fit_most_rated")(MostRated)


def test_a_second_algorithm_trains_saves_and_loads_through_the_base(most_rated, catalogue, tmp_path, monkeypatch):
    ratings, users, movies = catalogue
    model = Recommender.train(ratings, users, movies, algorithm="most_rated_toy", min_raters=3)
    assert type(model) is most_rated and model.metadata["algorithm"] == "most_rated_toy"
    assert model.params["min_raters"] == 3 and "cold_min_ratings" in model.params  # its own + the shared ones

    loaded = Recommender.load(model.save(tmp_path / "toy"))
    assert type(loaded) is most_rated and loaded.note == "toy"
    assert sorted(json.loads((tmp_path / "toy" / "checksums.json").read_text())) == [
        "arrays.npz", "ids.json", "metadata.json", "most_rated.json"]
    for user in (2, 3, 4, COLD_MINOR, PROFILE_ONLY_MINOR, 99_999):
        assert loaded.explain(user) == model.explain(user)
        assert loaded.predict(user, "plain+movie+10+2001") == model.predict(user, "plain+movie+10+2001")
    # the base's rules hold for it too: a warm minor's list has no adult movie and nothing rated
    warm_minor = next(u for u in sorted(MINORS) if not model.is_cold(u))
    rated = set(ratings.loc[ratings.user_id == warm_minor, "movie_id"])
    made = model.explain(warm_minor, n=N_MOVIES)
    assert made.how == "warm" and len(made.movies) == N_MOVIES - len(rated) - len(ADULT)  # every eligible one
    assert not set(made.movies) & (ADULT | rated)

    # its own file is checksummed like every other
    (tmp_path / "toy" / "most_rated.json").write_text('{"note": "tampered"}')
    with pytest.raises(BundleError, match=r"checksum mismatch on most_rated\.json"):
        Recommender.load(tmp_path / "toy")
    # a class asked for another algorithm's bundle refuses it
    with pytest.raises(BundleError, match="not UserKNN"):
        UserKNN.load(model.save(tmp_path / "toy2"))
    # and code that does not know the algorithm refuses its bundle with a clear reason
    monkeypatch.delitem(base.ALGORITHMS, "most_rated_toy")
    with pytest.raises(BundleError, match="unknown algorithm 'most_rated_toy'"):
        Recommender.load(tmp_path / "toy2")


def test_parameters_belong_to_the_algorithm_trained(most_rated, catalogue):
    with pytest.raises(ValueError, match=r"unknown model parameters: \['k'\]"):
        Recommender.train(*catalogue, algorithm="most_rated_toy", k=5)

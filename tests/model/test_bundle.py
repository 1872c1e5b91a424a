"""Save/load round trip and the refusal of partial or corrupt bundles."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from app.model import BundleError, Recommender

# The default algorithm's bundle: the base's files and its similarity matrix (checksums.json lists them).
KNN_FILES = ("arrays.npz", "ids.json", "metadata.json", "similarity.npy")


def test_round_trip_gives_the_same_lists_and_estimates(model, catalogue, tmp_path):
    model = copy.copy(model)
    model.metadata = {**model.metadata, "version": 3, "data_checksum": "abc"}
    loaded = Recommender.load(model.save(tmp_path / "3"))
    _, _, movies = catalogue
    for user in (1, 2, 3, 70, 500, 12345):
        assert loaded.recommend(user) == model.recommend(user)
        for movie in movies.movie_id[:15]:
            assert loaded.predict(user, movie) == pytest.approx(model.predict(user, movie), abs=1e-12)
    assert loaded.version == "3"
    assert loaded.metadata["data_checksum"] == "abc"
    assert loaded.metadata["params"] == model.params


def test_metadata_describes_the_model(model, tmp_path):
    model.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    for key in ("algorithm", "params", "trained_at", "train_size", "code_commit"):
        assert meta[key] not in (None, "")
    assert meta["algorithm"] == "user_knn"  # the registry key the bundle loads by
    assert sorted(json.loads((tmp_path / "b" / "checksums.json").read_text())) == sorted(KNN_FILES)


@pytest.mark.parametrize("victim", KNN_FILES)
def test_a_flipped_byte_in_any_file_is_refused_naming_the_file(model, tmp_path, victim):
    bundle = model.save(tmp_path / "b")
    path = bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=victim):
        Recommender.load(bundle)


@pytest.mark.parametrize("victim", [*KNN_FILES, "checksums.json"])
def test_a_partial_bundle_is_refused(model, tmp_path, victim):
    bundle = model.save(tmp_path / "b")
    (bundle / victim).unlink()
    with pytest.raises(BundleError, match="partial"):
        Recommender.load(bundle)


def test_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Recommender.load(tmp_path / "nope")


def test_saving_over_an_old_bundle_replaces_it_consistently(model, catalogue, tmp_path):
    ratings, users, movies = catalogue
    other = Recommender.train(ratings.iloc[: len(ratings) // 2], users, movies)
    bundle = other.save(tmp_path / "b")
    model.save(bundle)
    assert Recommender.load(bundle).recommend(2) == model.recommend(2)
    shutil.rmtree(bundle)

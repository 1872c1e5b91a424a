"""The lists materialised at training are the lists the computed path gives, and old bundles still serve."""

from __future__ import annotations

import dataclasses

import pytest

from app.model import LIST_WIDTH, Recommender
from tests.model.conftest import N_USERS, PROFILE_ONLY_USER


def computed(model: Recommender) -> Recommender:
    """The same model without its materialised lists: every list goes through neighbour support + rules."""
    return dataclasses.replace(model, top_lists=None)


@pytest.mark.parametrize("n", [1, 7, LIST_WIDTH])
def test_materialised_lists_equal_the_computed_lists_for_every_known_user(model, n):
    assert model.top_lists is not None and model.top_lists.shape == (len(model.user_ids), LIST_WIDTH)
    slow = computed(model)
    for user in range(1, N_USERS + 1):
        assert model.recommend(user, n) == slow.recommend(user, n), user


def test_a_known_user_is_served_without_the_neighbour_sum(model, monkeypatch):
    def refuse(*_args):
        raise AssertionError("neighbour support computed on the request path")

    monkeypatch.setattr(type(model), "score", refuse)  # the algorithm's neighbour support
    assert len(model.recommend(3)) == LIST_WIDTH
    with pytest.raises(AssertionError, match="request path"):
        model.recommend(3, LIST_WIDTH + 1)  # longer than what was materialised: computed


def test_a_bundle_saved_before_materialised_lists_loads_and_serves_the_same(model, tmp_path):
    old = computed(model).save(tmp_path / "old")
    loaded = Recommender.load(old)
    assert loaded.top_lists is None
    for user in (1, 2, 3, 70, PROFILE_ONLY_USER, 12345):
        assert loaded.recommend(user) == model.recommend(user)


def test_a_bundle_whose_lists_name_unknown_movies_is_refused(model, tmp_path):
    from app.model import BundleError

    broken = dataclasses.replace(model, top_lists=model.top_lists.copy())
    broken.top_lists[0, 0] = len(model.movie_ids)  # one past the catalogue
    with pytest.raises(BundleError, match="top_lists names movies outside"):
        Recommender.load(broken.save(tmp_path / "bad"))

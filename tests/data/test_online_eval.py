"""Online-evaluation arithmetic on hand-built logs (the reference design's score, hit rate, rating)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from auto_deployment.monitor.online_eval import (
    ServerAttributor,
    movie_score,
    rank_score,
    report,
    watched_score,
)

T0 = "2026-11-24T10:00:00"
LIST = ", ".join(f"m{i}+2000" for i in range(20))


def reco(user: int, when: str = T0, server: str = "s:1", status: int = 200) -> str:
    if status == 0:
        return (f"{when},{user},recommendation request {server}, status 0, result: "
                "java.util.concurrent.TimeoutException: No response after 800 ms, 815 ms")
    return f"{when},{user},recommendation request {server}, status 200, result: {LIST}, 12 ms"


def watch(user: int, movie: str, minutes: int, start_minute: int = 1) -> list[str]:
    return [f"2026-11-24T10:{start_minute + m:02d}:00,{user},GET /data/m/{movie}/{m}.mpg" for m in range(minutes)]


@pytest.mark.parametrize(("position", "expected"), [(0, 10), (4, 10), (5, 8), (9, 8), (10, 5), (14, 5),
                                                    (15, 3), (19, 3), (None, 0.01), (25, 0.01)])
def test_rank_score_follows_the_reference_buckets(position, expected):
    assert rank_score(position) == expected


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0.2), (0.19, 0.2), (0.2, 0.6), (0.49, 0.6), (0.5, 0.8),
                                                 (0.69, 0.8), (0.7, 1.0), (1.0, 1.0)])
def test_watched_share_follows_the_reference_buckets(share, expected):
    assert watched_score(share) == pytest.approx(expected)


def test_movie_score_is_rank_times_watched_plus_rank_times_rating():
    assert movie_score(0, 0.8, 4) == pytest.approx(10 * 1.0 + 10 * 4 / 5)
    assert movie_score(7, 0.3, None) == pytest.approx(8 * 0.6)
    assert movie_score(None, 1.0, 5) == pytest.approx(0.01 * 1 + 0.01 * 1)


def test_a_list_scores_its_best_watched_movie_and_counts_a_hit():
    runtimes = {"m2+2000": 10.0, "m12+2000": 10.0}
    lines = [reco(1), *watch(1, "m2+2000", 3), *watch(1, "m12+2000", 10, start_minute=10),
             "2026-11-24T10:40:00,1,GET /rate/m12+2000=5"]
    summary = report(lines, ServerAttributor(), runtimes)
    m = summary[("unknown", "s:1")]
    # m2 at position 2 watched 30% → 10×0.6 = 6; m12 at position 12, 100%, rated 5 → 5×1 + 5×1 = 10
    assert m["score"] == pytest.approx(10.0)
    assert m["hit_rate"] == 1.0
    assert m["avg_rating"] == 5.0
    assert m["lists"] == 1


def test_lists_without_a_following_watch_score_zero_and_miss():
    lines = [reco(1), reco(2), *watch(2, "m0+2000", 10)]
    m = report(lines, ServerAttributor(), {"m0+2000": 10.0})[("unknown", "s:1")]
    assert m["lists"] == 2
    assert m["hit_rate"] == 0.5
    assert m["score"] == pytest.approx((0 + 10 * 1.0) / 2)


def test_watching_something_else_scores_the_absent_rank_and_is_no_hit():
    lines = [reco(1), *watch(1, "other+1999", 10)]
    m = report(lines, ServerAttributor(), {"other+1999": 10.0})[("unknown", "s:1")]
    assert m["score"] == pytest.approx(0.01)
    assert m["hit_rate"] == 0.0


def test_watches_before_the_list_or_after_the_window_do_not_count():
    before = watch(1, "m0+2000", 5, start_minute=0)
    lines = [*[line.replace("T10:", "T09:") for line in before], reco(1), *watch(1, "m1+2000", 2, start_minute=40)]
    m = report(lines, ServerAttributor(), {"m0+2000": 5.0, "m1+2000": 2.0}, window_s=15 * 60)[("unknown", "s:1")]
    assert m["hit_rate"] == 0.0 and m["score"] == 0.0


def test_duplicate_minutes_count_once_and_failed_requests_are_not_lists():
    lines = [reco(1), reco(3, status=0), *watch(1, "m0+2000", 3), *watch(1, "m0+2000", 3), "garbage line"]
    summary = report(lines, ServerAttributor(), {"m0+2000": 10.0})
    m = summary[("unknown", "s:1")]
    assert m["lists"] == 1
    assert m["score"] == pytest.approx(10 * 0.6)  # 3 distinct minutes of 10 → 30 %


def test_groups_are_kept_apart_by_server():
    lines = [reco(1, server="a:1"), reco(2, server="b:1"), *watch(2, "m0+2000", 10)]
    summary = report(lines, ServerAttributor(), {"m0+2000": 10.0})
    assert summary[("unknown", "a:1")]["hit_rate"] == 0.0
    assert summary[("unknown", "b:1")]["hit_rate"] == 1.0


def test_the_latest_rating_counts_and_a_rating_without_watching_is_no_hit():
    lines = [reco(1), *watch(1, "m0+2000", 10), "2026-11-24T10:12:00,1,GET /rate/m0+2000=2",
             "2026-11-24T10:13:00,1,GET /rate/m0+2000=4", reco(2), "2026-11-24T10:02:00,2,GET /rate/m1+2000=5"]
    m = report(lines, ServerAttributor(), {"m0+2000": 10.0})[("unknown", "s:1")]
    assert m["avg_rating"] == 4.0  # user 1's latest rating
    assert m["hit_rate"] == 0.5  # user 2 only rated: not a viewing


def test_a_list_the_log_has_not_moved_past_waits_for_the_next_refresh():
    # its provenance row may not be written yet and its user has not reacted: counting it now
    # would report an unattributed, unwatched list
    young = "2026-11-24T10:09:55"
    lines = [reco(1), *watch(1, "m0+2000", 10), reco(2, when=young)]  # newest event: 10:10:00
    m = report(lines, ServerAttributor(), {"m0+2000": 10.0}, settle_s=10)[("unknown", "s:1")]
    assert m["lists"] == 1 and m["hit_rate"] == 1.0
    later = [*lines, "2026-11-24T10:10:06,2,GET /data/m/m5+2000/0.mpg"]
    assert report(later, ServerAttributor(), {"m0+2000": 10.0}, settle_s=10)[("unknown", "s:1")]["lists"] == 2


def test_a_live_log_settles_against_the_clock_not_its_future_watch_lines():
    # the simulator writes a session's watch lines at once, stamped with the minutes to come: the
    # newest event of a live log lies ahead of the clock and cannot say which lists are settled
    lines = [reco(1), reco(2, when="2026-11-24T10:00:20"), *watch(2, "m0+2000", 10)]  # watches up to 10:10
    now = datetime(2026, 11, 24, 10, 0, 25, tzinfo=UTC).timestamp()
    m = report(lines, ServerAttributor(), {"m0+2000": 10.0}, settle_s=10, now=now)[("unknown", "s:1")]
    assert m["lists"] == 1 and m["hit_rate"] == 0.0  # user 2's list, 5 s old, waits
    later = now + 10
    settled = report(lines, ServerAttributor(), {"m0+2000": 10.0}, settle_s=10, now=later)
    assert settled[("unknown", "s:1")]["lists"] == 2

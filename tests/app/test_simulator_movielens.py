"""`python -m simulator traffic --world movielens` against a server that serves a MovieLens model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app.contracts.events import RecommendationEvent, WatchEvent, parse_line
from app.contracts.tables import Tables
from app.model import Recommender
from app.settings import ROOT
from auto_deployment.monitor.online_eval import ServerAttributor, report


def test_movielens_users_ask_watch_and_rate_what_a_movielens_model_serves(
    ml100k: Tables, start_server, tmp_path: Path
) -> None:
    model = Recommender.train(ml100k.ratings, ml100k.users, ml100k.movies)
    model.metadata.update(version=1, data_checksum="movielens-100k")
    model.save(tmp_path / "models" / "1")
    server = start_server(models_root=tmp_path / "models", version=1, workers=1)
    log = tmp_path / "events.log"

    done = subprocess.run(
        [sys.executable, "-m", "simulator", "traffic", "--world", "movielens", "--url", server.url,
         "--rate", "40", "--duration", "30", "--max-sessions", "300", "--new-user-share", "0",
         "--out", f"file:{log}", "--json", "--seed", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["requests"], summary["ok"]) == (300, 300)

    lines = log.read_text().splitlines()
    events = [parse_line(line) for line in lines]  # every line in the platform's formats
    users, movies = set(ml100k.users.user_id), set(ml100k.movies.movie_id)
    lists = [e for e in events if isinstance(e, RecommendationEvent)]
    assert len(lists) == 300 and all(e.user_id in users and set(e.movies) <= movies for e in lists)
    assert all(e.movie_id in movies for e in events if isinstance(e, WatchEvent))
    # the fitted tastes make these users take what the model learnt they like, often
    m = report(lines, ServerAttributor(), settle_s=0)[("unknown", server.url.split("//", 1)[1])]
    assert m["lists"] == 300 and m["hit_rate"] > 0.5, m

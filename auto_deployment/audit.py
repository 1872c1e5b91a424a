"""`python -m auto_deployment audit`: which model version served a user, and what a version served.

Answers the auditor's question of design section 5 - "which model version, trained on which data,
with what RMSE, served user U (at time T)?" - by joining ``reccom`` (one row per served request)
with ``tracking`` (one row per version), as the read-only auditor account (the queries are in :mod:`app.store`):

    python -m auto_deployment audit user 4242 --since 2026-11-01 --until 2026-11-24T12:00
    python -m auto_deployment audit version 7 --json

Text is a table for people; ``--json`` is for machines. An unreachable database is one line on
stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from app import store
from app.settings import MySQL


def parse_time(text: str) -> datetime:
    """ISO-8601 date or date-time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 date or time") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as `2026-11-24T07:30:00.123Z`."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def iso(when: datetime | None) -> str | None:
    """A UTC datetime column as `2026-11-24T07:30:00Z` (milliseconds kept when present)."""
    if when is None:
        return None
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond // 1000:03d}"
    return text + "Z"


def _ms(when: datetime | None) -> int | None:
    return None if when is None else round(when.timestamp() * 1000)


def user_requests(
    settings: MySQL, user_id: int, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Every request of `user_id` served in [since, until], oldest first, with its version's provenance."""
    rows = store.user_requests(settings, user_id, _ms(since), _ms(until))
    return [
        {
            "served_at": iso_ms(r["served_at_ms"]),
            "served_at_ms": int(r["served_at_ms"]),
            "slot": r["slot"],
            "version_number": int(r["version_number"]),
            "data_checksum": r["data_checksum"],
            "trained_on": iso(r["trained_on"]),
            "model_rmse": r["model_rmse"],
            "data_creation": iso(r["data_creation"]),
            "request_id": r["request_id"],
            "host": r["host"],
            "latency_ms": r["latency_ms"],
            "movies": r["movies"].split(",") if r["movies"] else [],
        }
        for r in rows
    ]


def version_summary(settings: MySQL, version: int) -> dict[str, Any]:
    """What version `version` served: distinct users, requests (also per slot), first and last time."""
    served = store.version_served(settings, version)
    tracked = served["tracking"] or {}
    return {
        "version_number": version,
        "tracked": served["tracking"] is not None,
        "data_checksum": tracked.get("data_checksum"),
        "trained_on": iso(tracked.get("trained_on")),
        "model_rmse": tracked.get("model_rmse"),
        "users": served["users"],
        "requests": served["requests"],
        "requests_by_slot": served["by_slot"],
        "first_served": iso_ms(served["first_ms"]),
        "last_served": iso_ms(served["last_ms"]),
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_user(user_id: int, requests: list[dict[str, Any]], since: datetime | None, until: datetime | None) -> str:
    window = ""
    if since or until:
        window = f" between {iso(since.replace(tzinfo=None)) if since else '-'} and " \
                 f"{iso(until.replace(tzinfo=None)) if until else '-'}"
    if not requests:
        return f"user {user_id}: no request served{window}"
    versions = sorted({r["version_number"] for r in requests})
    head = (f"user {user_id}: {len(requests)} request(s){window}, "
            f"version(s) {', '.join(map(str, versions))}")
    header = ["served_at (UTC)", "slot", "version", "data_checksum", "trained_on", "rmse", "request_id"]
    rows = [
        [r["served_at"], r["slot"], str(r["version_number"]), _show(r["data_checksum"]), _show(r["trained_on"]),
         _show(r["model_rmse"]), r["request_id"]]
        for r in requests
    ]
    return head + "\n" + _table(header, rows)


def format_version(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"version {s['version_number']}" + ("" if s["tracked"] else " (no tracking row)"),
        f"  data checksum   {_show(s['data_checksum'])}",
        f"  trained on      {_show(s['trained_on'])}",
        f"  rmse            {_show(s['model_rmse'])}",
        f"  users served    {s['users']}",
        f"  requests        {s['requests']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in s['requests_by_slot'].items())})" if s["requests_by_slot"] else ""),
        f"  first served    {_show(s['first_served'])}",
        f"  last served     {_show(s['last_served'])}",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_what", required=True, metavar="what")
    user = sub.add_parser("user", help="every request of a user: when, slot, model version, its data and RMSE")
    user.add_argument("user_id", type=int, help="user id")
    user.add_argument("--since", type=parse_time, help="only requests at or after this ISO-8601 time (UTC default)")
    user.add_argument("--until", type=parse_time, help="only requests at or before this ISO-8601 time")
    user.add_argument("--json", action="store_true", help="machine-readable output")
    version = sub.add_parser("version", help="what a version served: users, requests, first and last time")
    version.add_argument("version", type=int, help="model version number")
    version.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace) -> int:
    """Answer the auditor's question; an unreachable database or failed query is one line on stderr, exit 1."""
    settings = MySQL.from_env()
    try:
        if args.audit_what == "user":
            requests = user_requests(settings, args.user_id, args.since, args.until)
            if args.json:
                out: Any = {
                    "user_id": args.user_id,
                    "since": args.since.isoformat() if args.since else None,
                    "until": args.until.isoformat() if args.until else None,
                    "requests": requests,
                }
                print(json.dumps(out, indent=2))
            else:
                print(format_user(args.user_id, requests, args.since, args.until))
        else:
            summary = version_summary(settings, args.version)
            print(json.dumps(summary, indent=2) if args.json else format_version(summary))
    except store.DatabaseError as exc:  # unreachable (names host, port, account) or a failed query
        print(f"audit: {exc}", file=sys.stderr)
        return 1
    return 0

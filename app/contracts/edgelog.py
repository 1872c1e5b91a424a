"""NGINX's access-log line: the one definition of its fields, shared by NGINX and the mtail program.

The release's card check (average latency of successful ``/recommend`` < 500 ms) is measured where the client
sees it, at NGINX, not by the handler's own histogram (which misses Gunicorn's queue, the socket and the
retries). NGINX writes one line per request in this format (``log_format movierec`` of nginx.conf.template,
rendered from `nginx_log_format`); mtail (``monitoring/mtail/nginx.mtail``) turns the lines into Prometheus
histograms. mtail's language cannot import this module, so its regex is kept equal to `FIELDS` by a test that
feeds it lines a real NGINX wrote (tests/e2e/test_edge_latency.py): change a field here, change the regex there.

Why these variables (and not a ``map`` from the upstream's address to a slot name): a mirrored shadow copy is a
subrequest that shares the variable cache of its main request, so a ``map`` evaluated for the copy's log line
would label the main line with the canary too. ``$upstream_*`` and ``$uri`` are never cached, so each line
carries its own: the copy's ``uri`` is ``SHADOW_URI``, and its upstream is the canary's.
"""

from __future__ import annotations

import re

# (field, NGINX variable, quoted): one ``field=value`` pair per entry, in this order, separated by one space.
# Quoted values may hold spaces (NGINX escapes a `"` inside them as \x22). After a retry the $upstream_* values
# list every try, ", " between tries and " : " across an internal redirect (error_page): the last one answered.
FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("time", "$time_iso8601", False),
    ("client", "$remote_addr", False),
    ("request", "$request", True),
    ("uri", "$uri", True),  # ``/recommend/<id>``, or ``SHADOW_URI`` for the canary's mirrored copy
    ("status", "$status", False),  # what the client got
    ("bytes", "$body_bytes_sent", False),
    ("request_time", "$request_time", False),  # includes waiting for a mirrored copy: not the card's figure
    ("upstream", "$upstream_addr", False),
    ("upstream_status", "$upstream_status", False),
    ("upstream_response_time", "$upstream_response_time", False),  # seconds, ms precision
    ("role", "$upstream_http_x_slot", False),  # the answering server's X-Slot header: stable | canary
    ("version", "$upstream_http_x_model_version", False),  # its X-Model-Version header
    ("request_id", "$movierec_request_id", False),
)
SHADOW_URI = "/_shadow"  # nginx.conf.template's internal location of the shadow copy

_SEPARATOR = re.compile(r", | : ")


def nginx_log_format() -> str:
    """The body of NGINX's ``log_format`` directive: one single-quoted NGINX string per field."""
    pairs = [f'{name}="{var}"' if quoted else f"{name}={var}" for name, var, quoted in FIELDS]
    return "\n".join(f"'{pair}{' ' if i < len(pairs) - 1 else ''}'" for i, pair in enumerate(pairs))


def last(value: str) -> str:
    """The last entry of an ``$upstream_*`` value (``"0.301, 0.004"`` → ``"0.004"``): the try that answered."""
    return _SEPARATOR.split(value)[-1]


def _line_pattern() -> re.Pattern[str]:
    parts = []
    for name, _var, quoted in FIELDS:
        value = f'"(?P<{name}>[^"]*)"' if quoted else f"(?P<{name}>.*?)"
        parts.append(f"{name}={value}")
    return re.compile(" ".join(parts))


_LINE = _line_pattern()


def parse(line: str) -> dict[str, str]:
    """One log line as ``{field: value}`` (quotes removed); `ValueError` if it is not in this format.

    Tests compare mtail's counts with this reading of the same lines.
    """
    found = _LINE.fullmatch(line.rstrip("\n"))
    if found is None:
        raise ValueError(f"not a movierec access-log line: {line[:200]!r}")
    return found.groupdict()

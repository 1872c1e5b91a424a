"""Movie ids as the streaming service writes them in its event log (design section 3)."""

from __future__ import annotations

import re
import unicodedata

import numpy as np


def course_movie_id(title: str, year: int | float | None) -> str:
    """The course's movie id: lower-case title words joined by ``+``, then the year.

    Mirrors how the real stream mangles titles: a comma sticks to its word as ``_``
    (``Monsters, Inc.`` → ``monsters_+inc.``), colons, apostrophes and other punctuation vanish,
    dots and stand-alone dashes stay, accents are folded and other non-ASCII letters dropped
    (``WALL·E`` → ``walle``). The result never holds whitespace, ``,``, ``/`` or ``=``.
    """
    text = unicodedata.normalize("NFKD", str(title)).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace(",", "_ ").replace("&", " and ")
    text = re.sub(r"[^a-z0-9._\- ]+", "", text.replace("/", " ").replace(":", " "))
    words = [w for w in text.split() if w.strip("._")] or ["untitled"]
    if year is not None and not (isinstance(year, float) and np.isnan(year)):
        words.append(str(int(year)))
    return "+".join(words)

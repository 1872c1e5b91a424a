"""The inference server and the model it serves.

`create_app` is imported lazily: `import app.settings` (done by every part of the platform, and by
`gunicorn.conf.py` before it sets PROMETHEUS_MULTIPROC_DIR) must not pull in Flask or
prometheus_client.
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Gunicorn's entry point: `gunicorn -c app/gunicorn.conf.py 'app:create_app()'`."""
    from app.server import create_app as _create_app

    return _create_app(*args, **kwargs)

"""`from auto_deployment.events import parse_line` (design section 10) keeps working.

The log-line format is a contract the simulator (writer) and the pipeline (reader) share, so it lives
in the ground floor, `app.contracts.events`; this module only re-exports it.
"""

from app.contracts.events import *  # noqa: F403
from app.contracts.events import MalformedLine, parse_line  # noqa: F401

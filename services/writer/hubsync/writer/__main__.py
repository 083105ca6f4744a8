"""``python -m hubsync.writer``: the rate-limited HubSpot gateway."""

import functools

from hubsync.core.service import main, tune_runtime
from hubsync.core.settings import load_settings
from hubsync.writer.service import build
from hubsync.writer.settings import WriterSettings

# Settings are read from the environment here, at the edge, and passed in.
settings = load_settings(WriterSettings)
# uvloop, and the start-up objects out of the collector's sight.
tune_runtime(uvloop=settings.uvloop)
main("writer", functools.partial(build, settings=settings))

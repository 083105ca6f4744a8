"""``python -m hubsync.mapper``: loads the mapper settings from the environment and serves."""

import functools

from hubsync.core.service import main, tune_runtime
from hubsync.core.settings import load_settings
from hubsync.mapper.service import build
from hubsync.mapper.settings import MapperSettings

# Settings are read from the environment here, at the edge, and passed in.
settings = load_settings(MapperSettings)
# uvloop, and the start-up objects out of the collector's sight.
tune_runtime(uvloop=settings.uvloop)
main("mapper", functools.partial(build, settings=settings))

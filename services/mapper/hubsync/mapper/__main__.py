"""``python -m hubsync.mapper``: loads the mapper settings from the environment and serves."""

import functools

from hubsync.core.service import main
from hubsync.core.settings import load_settings
from hubsync.mapper.service import build
from hubsync.mapper.settings import MapperSettings

# Settings are read from the environment here, at the edge, and passed in.
main("mapper", functools.partial(build, settings=load_settings(MapperSettings)))

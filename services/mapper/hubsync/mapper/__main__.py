"""``python -m hubsync.mapper``: the mapper service."""

from hubsync.core.service import main, tune_runtime
from hubsync.core.settings import load_settings
from hubsync.mapper.service import build
from hubsync.mapper.settings import MapperSettings

# uvloop, and the start-up objects out of the collector's sight (``build`` loads the settings
# again, with the rest of the service's).
tune_runtime(uvloop=load_settings(MapperSettings).uvloop)

main("mapper", build)

"""``python -m hubsync.ingress``: loads the ingress settings from the environment and serves."""

import functools

from hubsync.core.service import main, tune_runtime
from hubsync.core.settings import load_settings
from hubsync.ingress.service import build
from hubsync.ingress.settings import IngressSettings

# Settings are read from the environment here, at the edge, and passed in.
settings = load_settings(IngressSettings)
tune_runtime(uvloop=settings.uvloop)  # uvloop, and the start-up objects out of the collector's sight

main("ingress", functools.partial(build, settings=settings))

"""``python -m hubsync.writer``: the rate-limited HubSpot gateway."""

import functools

from hubsync.core.service import main
from hubsync.core.settings import load_settings
from hubsync.writer.service import build
from hubsync.writer.settings import WriterSettings

# Settings are read from the environment here, at the edge, and passed in.
main("writer", functools.partial(build, settings=load_settings(WriterSettings)))

"""``python -m hubsync.writer``: the rate-limited HubSpot gateway."""

from hubsync.core.service import main
from hubsync.writer.service import build

main("writer", build)

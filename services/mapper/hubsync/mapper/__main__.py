"""``python -m hubsync.mapper``: runs the mapper service."""

from hubsync.core.service import main
from hubsync.mapper.service import build

main("mapper", build)

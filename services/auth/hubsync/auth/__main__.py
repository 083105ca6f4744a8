from hubsync.auth.service import build
from hubsync.core.service import main

main("auth", build)

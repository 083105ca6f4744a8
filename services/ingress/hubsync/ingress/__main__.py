from hubsync.core.service import main
from hubsync.ingress.service import build

main("ingress", build)

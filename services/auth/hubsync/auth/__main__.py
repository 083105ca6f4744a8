"""``python -m hubsync.auth``: loads the auth settings from the environment and serves."""

from hubsync.auth.service import service_factory
from hubsync.auth.settings import AuthSettings
from hubsync.core.service import main
from hubsync.core.settings import load_settings

main("auth", service_factory(load_settings(AuthSettings)))

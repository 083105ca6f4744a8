"""hubsync.auth: the token vault (OAuth connections, private-app tokens, refresh, encryption at rest)."""

"""Shared runtime of every hubsync service: settings, logging, telemetry, Redis, gRPC."""

"""The ``hubsync`` command: run the whole suite locally and operate a running one."""

"""ingress: the webhook edge — verify, dedupe, suppress echoes, enqueue durably, answer fast."""

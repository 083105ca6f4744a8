"""HubSpot's webhook signatures (v1, v2, v3), shared by ingress (verifies) and the sandbox (signs).

That is all this package holds: :mod:`hubsync.hubspot.signatures`. The HTTP clients that call
HubSpot are in the services that call it: writer's ``hubspot_client`` (the CRM API, rate limits)
and auth's ``oauth_client`` (OAuth tokens).
"""

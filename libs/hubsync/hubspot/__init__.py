"""HubSpot facts shared by the services: webhook signatures and the standard object types.

That is all this package holds: :mod:`hubsync.hubspot.signatures` (v1, v2, v3; ingress verifies,
the sandbox signs) and :mod:`hubsync.hubspot.objecttypes` (names, ids and webhook prefixes of the
standard types; ingress, the mapper and writer read them). The HTTP clients that call
HubSpot are in the services that call it: writer's ``hubspot_client`` (the CRM API, rate limits)
and auth's ``oauth_client`` (OAuth tokens).
"""

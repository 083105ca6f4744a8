"""HubSpot protocol knowledge shared by hubsync's services: signatures, HTTP client, models."""

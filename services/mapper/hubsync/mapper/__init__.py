"""hubsync mapper: mappings, field ownership, the inbound and outbound pipelines, the change feed."""

"""hubsync's mapper: the mapping rules, both pipelines between HubSpot and the company, the feed.

Both pipelines are a line of named stages, each owning its data:

**outbound** (``PushRecords``):

1. :class:`~hubsync.mapper.servicer.MapperServicer` (``servicer.py``): proto in, proto out.
2. :class:`~hubsync.mapper.outbound.RecordPusher` (``outbound.py``): the portal's mappings
   (:class:`~hubsync.mapper.portal_mappings.PortalMappings`: defaults overlaid by tenant and
   portal overrides), transform (``transforms.py``), keep the company-owned fields, compare
   with the fingerprints (``fingerprints.py``), then writer's ``SubmitWrites``.

**inbound** (ingress's event streams → the change feed), behind
:class:`~hubsync.mapper.inbound.InboundWorker` (``inbound.py``):

1. turns: :class:`hubsync.core.ready.ReadyConsumer` gives a portal with work a turn of entries;
2. batches (``_inbound_batches.py``): the turn split into batches, order per record kept;
3. processing (``_inbound_process.py``): parse and coalesce (``inbound_events.py``), read the
   records back through writer (``hydrate.py``), publish the changes, dead letters and the
   input's ack in one transaction (``publish.py``);
4. parking (``_inbound_parking.py``, ``inbound_queues.py``): a portal whose connection is
   unusable waits, then its parked events replay;
5. the change feed (``feed.py``, ``feed_ready.py``, ``groups.py``): ``Subscribe``/``Ack``.

Around them: the mappings (``mappings.py`` the format, ``registry.py`` the set in force with hot
reload, ``properties.py`` HubSpot's property definitions, ``suggest.py``), per-portal and
per-tenant configuration (``config_admin.py`` behind ``config_servicer.py``), custom object types
(``objecttypes.py``) and the sync metrics (``metrics.py``). ``service.py`` builds it all from the
:class:`~hubsync.mapper.settings.MapperSettings` passed in (``__main__`` loads them from the
environment). Modules with a leading underscore are internal to their facade; the others name
their public surface in ``__all__``.
"""

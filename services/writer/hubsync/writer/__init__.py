"""hubsync's writer: the only component that calls HubSpot's API, under every portal's quota.

The write path is one pipeline of named stages; each owns its data and hands the next one a
plain value:

1. :class:`~hubsync.writer.servicer.WriterServicer` (``servicer.py``): proto in, proto out;
   checks the portal and request id. Reads go to :class:`~hubsync.writer.reads.RecordReader`.
2. :class:`~hubsync.writer.gateway.WriterGateway` (``gateway.py``): admission. Canonical object
   types, :func:`~hubsync.writer.submissions.validate`, the read-only pilot, then either the
   durable queue (``wait=false``) or the request id's claim and the writes' versions
   (:class:`~hubsync.writer.ordering.RecordVersions`).
3. :class:`~hubsync.writer.queue.WriteQueue` / ``QueueConsumer`` (``queue.py``): the durable
   queue ``hubsync:{<portal>}:writes`` and SubmitWrites' idempotency records; the consumer gives
   each entry back to the gateway (``process_queued``) with its
   :class:`~hubsync.writer._ledger.Ledger` (what earlier attempts finished).
4. :class:`~hubsync.writer.submissions.WriteSubmitter` (``submissions.py``): one submission in
   the order its association graph draws (``_graph.py``), record ids resolved, GDPR deletes
   sent and audited; every batchable write becomes a :class:`~hubsync.writer.batches.BatchInput`
   under a :class:`~hubsync.writer.batches.BatchKey`.
5. :class:`~hubsync.writer.batches.Coalescer` (``batches.py``): merges inputs of one key from
   all callers into batches of up to 100, takes one burst-window slot per batch from the rate
   limiter (``ratelimit.py``) and passes it on as a :class:`~hubsync.writer.ratelimit.ReservedSlot`.
6. :class:`~hubsync.writer.batches.BatchSender` (``batches.py``): claims versions, sends the
   batch, applies HubSpot's error table (splits, 409 conflicts, the dead-letter queue in
   ``dlq.py``) and records what was written.
7. :class:`~hubsync.writer.hubspot_client.HubSpotClient` (``hubspot_client.py``): one HTTP
   call: circuit breaker (``circuit.py``), the reserved slot or a new one, the token from auth
   (``tokens.py``), retries with backoff, the limits HubSpot's headers tell.

``service.py`` builds the stages from :class:`~hubsync.writer.settings.WriterSettings` passed
in (``__main__`` loads them from the environment); ``docs/writer.md`` has the code map.

The package's surface for the rest of hubsync is ``service.build`` and ``settings.WriterSettings``
(``python -m hubsync.writer`` runs them); each module's ``__all__`` names what its neighbouring
stages and the tests may use, and modules with a leading underscore (``_graph``, ``_ledger``,
``_results``) are helpers of one stage, not a stage of their own.
"""

"""The writes the writer benchmarks (bench/writer, bench/tenants/writer.py) submit."""

from __future__ import annotations

from hubsync.api.writer.v1 import writer_pb2


def contact_upserts(first: int, stop: int) -> list[writer_pb2.Write]:
    """Upserts by email of the contacts ``bench{i}@example.com``, ``first <= i < stop``."""
    return [
        writer_pb2.Write(
            record=writer_pb2.RecordWrite(
                operation=writer_pb2.WRITE_OPERATION_UPSERT,
                object_type="contacts",
                id=f"bench{i}@example.com",
                id_property="email",
                properties={"firstname": f"F{i}", "lastname": "Bench"},
            )
        )
        for i in range(first, stop)
    ]

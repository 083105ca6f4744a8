"""Property-based checks of the store: unique-value indexes stay exact under any sequence of writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hubsync.sandbox.errors import ApiError
from hubsync.sandbox.store import Clock, PortalStore, WriteSource

SRC = WriteSource("INTEGRATION", "1001", 1001)
VALUES = st.sampled_from(["a@x.com", "b@x.com", "c@x.com", ""])
EXT = st.sampled_from(["e1", "e2", "e3", ""])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "update", "archive", "restore", "merge"]),
        st.integers(0, 5),
        st.integers(0, 5),
        VALUES,
        EXT,
    ),
    max_size=40,
)


def _check_invariants(store: PortalStore) -> None:
    objs = store.objects["contacts"]
    for name, index in store.unique["contacts"].items():
        live = {o.props[name]: o.id for o in objs.values() if not o.archived and o.props.get(name)}
        assert index == live, name  # exact: no stale entries, no missing ones, no duplicates


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_unique_indexes_stay_exact(ops: list[tuple[str, int, int, str, str]]) -> None:
    events: list[object] = []
    store = PortalStore(1, Clock(), events.append)
    for op, i, j, email, ext in ops:
        ids = sorted(store.objects["contacts"])
        props = {k: v for k, v in (("email", email), ("external_id", ext)) if v or op == "update"}
        try:
            if op == "create":
                store.create("contacts", props, SRC)
            elif ids:
                a = store.objects["contacts"][ids[i % len(ids)]]
                b = store.objects["contacts"][ids[j % len(ids)]]
                if op == "update" and not a.archived:
                    store.update("contacts", a, props, SRC)
                elif op == "archive" and not a.archived:
                    store.archive("contacts", a, SRC)
                elif op == "restore" and a.archived:
                    store.restore("contacts", a.id, SRC)
                elif op == "merge" and a is not b and not a.archived and not b.archived:
                    store.merge("contacts", a, b, SRC)
        except ApiError as err:
            if err.status == 404:  # restoring a merged-away record
                assert op == "restore"
            else:
                assert err.status == 409
                assert "Existing ID: " in err.body["message"]
        _check_invariants(store)

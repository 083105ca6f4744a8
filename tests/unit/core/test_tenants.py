"""What ``hubsync tenant`` relies on in the key registry: every key of a portal is named by its
registry pattern, and every key of no portal is either a registry of portals (deleting a tenant
removes the portal from it) or known to hold none."""

from __future__ import annotations

import inspect

import pytest

from hubsync.core import keys
from hubsync.core.tenants import _parse_token, key_pattern

# Keys of no portal that hold no portal ids (so deleting a tenant leaves them alone).
HOLD_NO_PORTAL = {
    keys.FEED_GROUPS_KEY,  # consumer group names
    keys.CONNECTION_CHANGES_CHANNEL,  # a pub/sub channel
    keys.AUTH_REFRESH_DUE_BACKFILLED_KEY,  # a time
    keys.AUTH_REFRESHER_LOCK_KEY,  # a lock owner
    keys.CONFIG_CHANGES_CHANNEL,  # a pub/sub channel
    # Publications in progress (``<portal>|<token>|<types>``): each lives seconds, removed by the
    # publisher or repaired by a subscriber; a deleted portal's repair marks streams that are gone.
    keys.FEED_PUBLISHING_KEY,
}


def test_every_key_of_no_portal_is_classified_for_tenant_deletion() -> None:
    constants = {v for n in keys.__all__ if isinstance(v := getattr(keys, n), str)}
    unclassified = constants - set(keys.portal_indexes(7)) - HOLD_NO_PORTAL
    assert unclassified == set(), (
        "a new key of no portal: if it can hold portal ids, return it from keys.portal_indexes() "
        "(or `hubsync tenant delete` leaves deleted portals in it); else list it in HOLD_NO_PORTAL"
    )


def _built_keys() -> list[tuple[str, str]]:
    """(key built for portal 42, the name of the registry function that built it)."""
    out = []
    for name in keys.__all__:
        fn = getattr(keys, name)
        if not inspect.isfunction(fn) or name in ("portal_key", "portal_key_pattern", "portal_indexes"):
            continue
        params = [p for p, v in inspect.signature(fn).parameters.items() if v.kind is v.POSITIONAL_OR_KEYWORD]
        if params[0] != "portal_id":
            continue
        out.append((fn(42, *(f"{p}-x" for p in params[1:])), name))
    return out


def test_each_portal_key_is_named_by_the_pattern_of_its_own_function() -> None:
    patterns: dict[str, set[str]] = {}
    for key, name in _built_keys():
        pattern = key_pattern(key)
        assert "(not in the registry)" not in pattern, key
        assert pattern.startswith("hubsync:{p}:"), pattern
        patterns.setdefault(pattern, set()).add(name)
    shared = {p: n for p, n in patterns.items() if len(n) > 1}
    assert shared == {}, "two registry functions build keys of the same pattern"


def test_patterns_tell_similar_keys_apart_and_name_foreign_keys() -> None:
    assert key_pattern(keys.push_version_key(42)) == "hubsync:{p}:push:version"
    assert key_pattern(keys.push_done_key(42, "abc")) == "hubsync:{p}:push:<request_digest>"
    # A value with colons (an email as a unique property value) still finds its pattern.
    ids = keys.writer_ids_key(42, "contacts", "email", "a:b@example.com")
    assert key_pattern(ids) == "hubsync:{p}:writer:ids:<object_type>:<id_property>:<value>"
    assert key_pattern(keys.portal_key(42, "zz")) == "hubsync:{p}:zz (not in the registry)"


def test_a_page_token_must_be_one_list_printed() -> None:
    assert _parse_token("") == (0, 0)
    assert _parse_token("2:1234") == (2, 1234)
    for bad in ("x", "9:1", "1:-3", "1:"):
        with pytest.raises(ValueError):
            _parse_token(bad)

"""Per-portal, per-app API limits: rolling 10-second burst, daily budget, search per second."""

from __future__ import annotations

from collections import deque

from .errors import rate_limited

INTERVAL_MS = 10_000
DAY_MS = 86_400_000


class RollingWindow:
    """Counts events in the last ``interval_ms`` milliseconds."""

    __slots__ = ("interval_ms", "limit", "second", "stamps")

    def __init__(self, limit: int, interval_ms: int):
        self.limit = limit
        self.interval_ms = interval_ms
        self.stamps: deque[int] = deque()
        # The last second's stamps, for the deprecated X-HubSpot-RateLimit-Secondly headers.
        self.second: deque[int] = deque()

    def used(self, now: int) -> int:
        s = self.stamps
        edge = now - self.interval_ms
        while s and s[0] <= edge:
            s.popleft()
        return len(s)

    def used_last_second(self, now: int) -> int:
        s = self.second
        edge = now - 1000
        while s and s[0] <= edge:
            s.popleft()
        return len(s)

    def add(self, now: int) -> None:
        self.stamps.append(now)
        self.second.append(now)


class DailyCounter:
    """Requests since the last UTC midnight (HubSpot resets at midnight in the account's zone)."""

    __slots__ = ("count", "day", "limit")

    def __init__(self, limit: int):
        self.limit = limit
        self.day = -1
        self.count = 0

    def used(self, now: int) -> int:
        day = now // DAY_MS
        if day != self.day:
            self.day = day
            self.count = 0
        return self.count


class RateLimiter:
    """All limits of the sandbox. ``check_*`` raise the 429 or return the headers to send."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.burst: dict[tuple[int, str], RollingWindow] = {}
        self.daily: dict[int, DailyCounter] = {}
        self.search: dict[int, RollingWindow] = {}

    def reset(self) -> None:
        self.burst.clear()
        self.daily.clear()
        self.search.clear()

    def check_api(
        self, hub_id: int, app_key: str, burst: int, daily: int, now: int, oauth: bool
    ) -> dict[str, str]:
        """Counts one API call. ``app_key`` is e.g. ``"oauth:1001"`` or ``"private"``."""
        w = self.burst.get((hub_id, app_key))
        if w is None or w.limit != burst:
            w = self.burst[(hub_id, app_key)] = RollingWindow(burst, INTERVAL_MS)
        d = self.daily.get(hub_id)
        if d is None or d.limit != daily:
            d = self.daily[hub_id] = DailyCounter(daily)
        used = w.used(now)
        day_used = d.used(now)
        secondly = max(1, burst // 10)
        if self.enabled:
            if day_used >= daily:
                raise rate_limited("DAILY", _headers(burst, 0, secondly, 0, daily, 0, oauth))
            if used >= burst:
                sec_used = w.used_last_second(now)
                raise rate_limited(
                    "TEN_SECONDLY_ROLLING",
                    _headers(burst, 0, secondly, max(0, secondly - sec_used), daily, daily - day_used, oauth),
                )
        w.add(now)
        d.count += 1
        sec_used = w.used_last_second(now)
        return _headers(
            burst,
            max(0, burst - used - 1),
            secondly,
            max(0, secondly - sec_used),
            daily,
            max(0, daily - day_used - 1),
            oauth,
        )

    def check_search(self, hub_id: int, per_second: int, now: int) -> None:
        w = self.search.get(hub_id)
        if w is None or w.limit != per_second:
            w = self.search[hub_id] = RollingWindow(per_second, 1000)
        if self.enabled and w.used(now) >= per_second:
            raise rate_limited("SECONDLY")
        w.add(now)

    def count_daily(self, hub_id: int, daily: int, now: int) -> None:
        d = self.daily.get(hub_id)
        if d is None or d.limit != daily:
            d = self.daily[hub_id] = DailyCounter(daily)
        if self.enabled and d.used(now) >= daily:
            raise rate_limited("DAILY")
        d.count += 1

    def status(self) -> dict[str, object]:
        return {
            "burst": {f"{h}/{k}": len(w.stamps) for (h, k), w in self.burst.items()},
            "daily": {str(h): d.count for h, d in self.daily.items()},
        }


def _headers(
    burst: int, remaining: int, secondly: int, sec_remaining: int, daily: int, day_remaining: int, oauth: bool
) -> dict[str, str]:
    h = {
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Max": str(burst),
        "X-HubSpot-RateLimit-Remaining": str(remaining),
        "X-HubSpot-RateLimit-Secondly": str(secondly),
        "X-HubSpot-RateLimit-Secondly-Remaining": str(sec_remaining),
    }
    if not oauth:
        # OAuth apps get no daily headers (facts file, section 5).
        h["X-HubSpot-RateLimit-Daily"] = str(daily)
        h["X-HubSpot-RateLimit-Daily-Remaining"] = str(day_remaining)
    return h

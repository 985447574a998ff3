"""Per-user limits the gateway checks before any work starts: sessions created and turns
started per minute, and the day's token budget. Counted in the store, so every gateway of the
cluster sees the same counts (two gateways together allow what one allows).

The windows are the `limits` library's fixed-window strategy over a storage backed by our own
store (`StoreStorage`: one atomic upsert per hit, in SQLite or PostgreSQL): the library keeps
the window arithmetic, the store makes it shared. A refused request records nothing else.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter

from actors.errors import LimitExceeded
from actors.settings import Settings
from actors.store import Store, StoreError
from gateway.identity import Caller


class StoreStorage(Storage):
    """The `limits` storage interface over the store's `rate_windows` table."""

    STORAGE_SCHEME = ["llmcam-store"]

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return StoreError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.store.rate_incr(key, expiry, amount)

    def get(self, key: str) -> int:
        return self.store.rate_get(key)[0]

    def get_expiry(self, key: str) -> float:
        return self.store.rate_get(key)[1]

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        return self.store.rate_clear()

    def clear(self, key: str) -> None:
        self.store.rate_clear(key)


def seconds_to_utc_midnight(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return 86400 - now % 86400


class Quota:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._limiter = FixedWindowRateLimiter(StoreStorage(store))
        self._rates = {
            "sessions": ("LLMCAM_RATE_SESSIONS", settings.rate_sessions, "sessions created"),
            "turns": ("LLMCAM_RATE_TURNS", settings.rate_turns, "chat turns started"),
        }

    async def hit(self, kind: str, caller: Caller) -> None:
        """Count one more `kind` ("sessions", "turns") for the caller, or refuse it."""
        variable, amount, what = self._rates[kind]
        item = RateLimitItemPerMinute(amount, namespace="llmcam")
        if await asyncio.to_thread(self._limiter.hit, item, kind, caller.account):
            return
        stats = await asyncio.to_thread(self._limiter.get_window_stats, item, kind,
                                        caller.account)
        raise LimitExceeded(variable, f"too many {what}: at most {amount} a minute "
                            f"({variable}); try again shortly",
                            math.ceil(stats.reset_time - time.time()))

    async def check_budget(self, caller: Caller) -> None:
        """Refuse a new turn once the caller's tokens today reached LLMCAM_TOKEN_BUDGET."""
        budget = self.settings.token_budget
        if budget <= 0:
            return
        used = (await asyncio.to_thread(self.store.usage_today, caller.account))["tokens_today"]
        if used >= budget:
            raise LimitExceeded("LLMCAM_TOKEN_BUDGET", f"today's token budget is spent ({used} "
                                f"of {budget} tokens, LLMCAM_TOKEN_BUDGET); it renews at "
                                "midnight UTC", seconds_to_utc_midnight())

    async def usage(self, caller: Caller) -> dict[str, Any]:
        return await asyncio.to_thread(self.store.usage_today, caller.account)

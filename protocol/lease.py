"""The writer lease's clock (sans-IO): how long a node may act on a lease it last renewed at a given moment.

The lease is a replicated key that expires ``ttl_s`` after the server stored its last renewal. The holder
only knows when it *sent* that renewal, which is earlier, so counting from then is safe; it stops acting a
margin before even that expiry (``SAFETY``), because its clock and the servers' tick at slightly different
rates and a stalled process (SIGSTOP, a VPS pause) must find its lease already void when it wakes.
"""

from __future__ import annotations

from typing import Final

import attrs

SAFETY: Final = 0.6  # act on a lease for at most this share of its TTL after sending its last renewal
RENEW_EVERY: Final = 0.25  # renew this share of the TTL after the last renewal: several tries before SAFETY


@attrs.define
class LeaseClock:
    ttl_s: float
    sent_at: float | None = None  # when the last successful take or renewal was sent (monotonic seconds)

    def granted(self, sent_at: float) -> None:
        """A take or renewal sent at ``sent_at`` succeeded."""
        self.sent_at = sent_at

    def void(self) -> None:
        self.sent_at = None

    def held(self, now: float) -> bool:
        """Whether this node may still act as the writer at ``now``."""
        return self.sent_at is not None and now < self.sent_at + self.ttl_s * SAFETY

    def next_attempt(self, now: float) -> float:
        """When to renew (holding) or try to take the lease again (not holding)."""
        base = self.sent_at if self.sent_at is not None else now
        return max(now, base + self.ttl_s * RENEW_EVERY)

"""The lease clock: held only within the safe share of the TTL after the last renewal was sent."""

from __future__ import annotations

from protocol.lease import RENEW_EVERY, SAFETY, LeaseClock


def test_a_lease_is_held_from_a_grant_until_the_safe_share_of_its_ttl() -> None:
    clock = LeaseClock(ttl_s=10.0)
    assert not clock.held(0.0)
    clock.granted(100.0)
    assert clock.held(100.0)
    assert clock.held(100.0 + 10.0 * SAFETY - 0.001)
    assert not clock.held(100.0 + 10.0 * SAFETY)  # well before the server lets the key expire at 110


def test_renewals_come_several_times_before_the_lease_goes_void() -> None:
    clock = LeaseClock(ttl_s=10.0)
    clock.granted(100.0)
    assert clock.next_attempt(100.0) == 100.0 + 10.0 * RENEW_EVERY
    assert RENEW_EVERY * 2 < SAFETY  # a failed renewal still leaves a second try while held
    assert clock.next_attempt(200.0) == 200.0  # overdue: at once


def test_a_void_lease_is_not_held_and_is_tried_again_a_share_of_the_ttl_later() -> None:
    clock = LeaseClock(ttl_s=10.0)
    clock.granted(100.0)
    clock.void()
    assert not clock.held(100.5)
    assert clock.next_attempt(100.5) == 100.5 + 10.0 * RENEW_EVERY

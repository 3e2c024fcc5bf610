"""Admission: slots, a FIFO queue, immediate refusals, cancellation and drain."""

from __future__ import annotations

import asyncio

import pytest

from rag_grpc.errors import ResourceExhausted, Unavailable
from rag_grpc.limits.admission import Admission


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_full_queue_refuses_at_once_with_unavailable() -> None:
    admission = Admission(capacity=1, max_waiting=1)
    await admission.acquire("a")
    queued = asyncio.create_task(admission.acquire("b"))
    await _settle()
    assert (admission.running, admission.waiting) == (1, 1)
    with pytest.raises(Unavailable, match="overloaded"):
        await admission.acquire("c")
    admission.release("a")
    await queued
    assert (admission.running, admission.waiting) == (1, 0)
    admission.release("b")
    assert admission.running == 0


async def test_callers_are_admitted_in_arrival_order() -> None:
    admission = Admission(capacity=1, max_waiting=5)
    await admission.acquire("first")
    order: list[str] = []

    async def take(name: str) -> None:
        await admission.acquire(name)
        order.append(name)

    tasks = [asyncio.create_task(take(n)) for n in ("b", "c", "d")]
    await _settle()
    for holder in ("first", "b", "c"):
        admission.release(holder)
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["b", "c", "d"]
    admission.release("d")
    assert admission.running == 0


async def test_per_caller_quota_is_resource_exhausted_and_spares_others() -> None:
    admission = Admission(capacity=1, max_waiting=4, per_caller=2)
    await admission.acquire("greedy")
    queued = asyncio.create_task(admission.acquire("greedy"))
    await _settle()
    with pytest.raises(ResourceExhausted, match="quota 2"):
        await admission.acquire("greedy")
    other = asyncio.create_task(admission.acquire("modest"))
    await _settle()
    assert admission.waiting == 2
    admission.release("greedy")
    await queued
    admission.release("greedy")
    await other
    admission.release("modest")
    assert (admission.running, admission.waiting) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue_and_its_quota() -> None:
    admission = Admission(capacity=1, max_waiting=1, per_caller=1)
    await admission.acquire("a")
    waiting = asyncio.create_task(admission.acquire("b"))
    await _settle()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.waiting == 0
    # b's quota and the queue place are free again.
    again = asyncio.create_task(admission.acquire("b"))
    await _settle()
    assert admission.waiting == 1
    admission.release("a")
    await again
    admission.release("b")
    assert admission.running == 0


async def test_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    admission = Admission(capacity=1, max_waiting=2)
    await admission.acquire("a")
    doomed = asyncio.create_task(admission.acquire("b"))
    patient = asyncio.create_task(admission.acquire("c"))
    await _settle()
    admission.release("a")  # hands the slot to b's future...
    doomed.cancel()  # ...but b is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await doomed
    await patient
    assert (admission.running, admission.waiting) == (1, 0)
    admission.release("c")
    assert admission.running == 0


async def test_drain_refuses_queued_and_new_callers_and_lets_holders_finish() -> None:
    admission = Admission(capacity=1, max_waiting=3)
    async with admission.slot("holder"):
        queued = asyncio.create_task(admission.acquire("queued"))
        await _settle()
        admission.drain()
        with pytest.raises(Unavailable, match="draining"):
            await queued
        with pytest.raises(Unavailable, match="draining"):
            await admission.acquire("late")
        assert (admission.running, admission.waiting) == (1, 0)
    assert admission.running == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        Admission(capacity=0, max_waiting=1)

"""A send must end inside its lease (outbox/dispatcher.py): otherwise another dispatcher can
take the row over while it is still being sent, and two dispatchers send it at once.

The chaos suite found it: a START-ed send could wait in the pool's queue for a thread (up to
one send's time) and then run for up to another one, past the lease. These tests pin the
budget down without a database: START is replaced where a row would be started.
"""

from __future__ import annotations

import time
import uuid

import pytest

from channels.base import Channel, Message
from outbox import dispatcher as dispatcher_module
from outbox import store
from outbox.dispatcher import Dispatcher
from outbox.retry import RetryPolicy

SEND_TIMEOUT = 1.0


class RecordingChannel(Channel):
    kind = "test"
    send_timeout = SEND_TIMEOUT

    def __init__(self, name: str):
        super().__init__(name)
        self.sent: list[Message] = []

    def send(self, message: Message) -> str:
        self.sent.append(message)
        return "provider-id"


class RecordingPool:
    def __init__(self):
        self.submitted: list[store.Delivery] = []

    def submit(self, fn, delivery):
        self.submitted.append(delivery)


@pytest.fixture
def channel():
    return RecordingChannel("test")


@pytest.fixture
def dispatcher(channel, monkeypatch):
    # START answers "all of them may be sent" instead of asking the database.
    monkeypatch.setattr(dispatcher_module.store, "start", lambda group, dispatcher: {d.outbox_id for d in group})
    return Dispatcher(channels={"test": channel}, threads=2, retry_policy=RetryPolicy(0.1, 1, 5))


def delivery(lease_left: float, outbox_id: int = 1) -> store.Delivery:
    return store.Delivery(
        outbox_id=outbox_id, lease_token=uuid.uuid4(), channel="test",
        message=Message(recipient="x", body="hi", notification_id=str(uuid.uuid4())),
        attempt=1, lease_expires=time.monotonic() + lease_left,
    )


def test_with_a_free_thread_a_send_needs_one_send_timeout_of_lease(dispatcher):
    dispatcher._in_flight = 1  # of 2 threads: one is free
    row = delivery(lease_left=1.5 * SEND_TIMEOUT)
    pool = RecordingPool()
    assert dispatcher._start_ready(pool) is False  # nothing ready yet
    dispatcher._ready.append(row)
    assert dispatcher._start_ready(pool) is True
    assert pool.submitted == [row]


def test_a_send_that_would_wait_for_a_thread_needs_two_send_timeouts_else_it_waits_unstarted(dispatcher):
    dispatcher._in_flight = 2  # every thread busy: a started send would queue for one
    short, long = delivery(1.5 * SEND_TIMEOUT, 1), delivery(3 * SEND_TIMEOUT, 2)
    dispatcher._ready.extend([short, long])
    pool = RecordingPool()
    assert dispatcher._start_ready(pool) is True
    assert pool.submitted == [long]  # enough lease for the wait and the send
    assert list(dispatcher._ready) == [short]  # not started (a cancel still wins), not dropped
    assert dispatcher._held


def test_a_held_row_wakes_the_claim_loop_as_soon_as_a_thread_is_free(dispatcher):
    dispatcher._held = True
    dispatcher._in_flight = 2
    dispatcher._wake.clear()
    dispatcher._send(delivery(lease_left=0.1))  # finishes at once (see the next test)
    assert dispatcher._in_flight == 1 and dispatcher._wake.is_set()


def test_a_send_whose_lease_ran_short_before_a_thread_took_it_is_not_sent_but_released(dispatcher, channel):
    outcome = dispatcher._attempt(delivery(lease_left=0.5 * SEND_TIMEOUT))
    assert channel.sent == []
    assert outcome.status == "retrying" and outcome.retry_delay == 0
    assert "not sent" in outcome.error


def test_a_send_with_lease_enough_is_sent(dispatcher, channel):
    outcome = dispatcher._attempt(delivery(lease_left=2 * SEND_TIMEOUT))
    assert outcome.status == "sent" and len(channel.sent) == 1

"""A send must end inside its lease (outbox/dispatcher.py): otherwise another dispatcher can
take the row over while it is still being sent, and two dispatchers send it at once.

The chaos suite found it: a START-ed send could wait in the pool's queue for a thread (up to
one send's time) and then run for up to another one, past the lease. These tests pin the
budget down without a database: START is replaced where a row would be started. A send's time
is its channel's deadline (Channel.deliver gives up then), plus the slack of giving up.
"""

from __future__ import annotations

import time
import uuid

import pytest

from channels.base import Channel, Message
from outbox import dispatcher as dispatcher_module
from outbox import store
from outbox.dispatcher import DEADLINE_SLACK, Dispatcher, lease_allows_send
from outbox.retry import RetryPolicy

SEND_TIMEOUT = 1.0


class RecordingChannel(Channel):
    kind = "test"
    sends_in_process = True

    def __init__(self, name: str):
        super().__init__(name, timeout=SEND_TIMEOUT)
        self.sent: list[Message] = []

    def send(self, message: Message) -> str:
        self.sent.append(message)
        return "provider-id"


class RecordingPool:
    def __init__(self):
        self.submitted: list[store.Delivery] = []

    def submit(self, fn, lane, delivery):
        self.submitted.append(delivery)


@pytest.fixture
def channel():
    return RecordingChannel("test")


@pytest.fixture
def dispatcher(channel, monkeypatch):
    # START answers "all of them may be sent" instead of asking the database.
    monkeypatch.setattr(dispatcher_module.store, "start", lambda group, dispatcher: {d.outbox_id for d in group})
    return Dispatcher(channels={"test": channel}, threads=2, retry_policy=RetryPolicy(0.1, 1, 5))


# What one send needs of its lease: its deadline, and the slack of abandoning it there.
ONE_SEND = SEND_TIMEOUT + DEADLINE_SLACK


def delivery(lease_left: float, outbox_id: int = 1) -> store.Delivery:
    return store.Delivery(
        outbox_id=outbox_id, lease_token=uuid.uuid4(), channel="test",
        message=Message(recipient="x", body="hi", notification_id=str(uuid.uuid4())),
        attempt=1, lease_expires=time.monotonic() + lease_left,
    )


def test_the_lease_budget_is_one_send_with_a_free_thread_and_two_when_a_thread_must_be_waited_for():
    assert lease_allows_send(lease_left=ONE_SEND, send_timeout=SEND_TIMEOUT)
    assert not lease_allows_send(lease_left=ONE_SEND - 0.01, send_timeout=SEND_TIMEOUT)
    assert lease_allows_send(lease_left=2 * ONE_SEND, send_timeout=SEND_TIMEOUT, sends_before=1)
    assert not lease_allows_send(lease_left=2 * ONE_SEND - 0.01, send_timeout=SEND_TIMEOUT, sends_before=1)


@pytest.fixture
def lane(dispatcher):
    lane = dispatcher.lanes["test"]
    lane.pool.shutdown()
    lane.pool = RecordingPool()
    return lane


def test_with_a_free_thread_a_send_needs_one_send_of_lease(dispatcher, lane):
    lane.in_flight = 1  # of 2 threads: one is free
    row = delivery(lease_left=ONE_SEND + 0.3)
    assert dispatcher._start_ready(lane) is False  # nothing ready yet
    lane.ready.append(row)
    assert dispatcher._start_ready(lane) is True
    assert lane.pool.submitted == [row]


def test_a_send_that_would_wait_for_a_thread_needs_two_sends_of_lease_else_it_waits_unstarted(dispatcher, lane):
    lane.in_flight = 2  # every thread busy: a started send would queue for one
    short, long = delivery(ONE_SEND + 0.3, 1), delivery(2 * ONE_SEND + 0.3, 2)
    lane.ready.extend([short, long])
    assert dispatcher._start_ready(lane) is True
    assert lane.pool.submitted == [long]  # enough lease for the wait and the send
    assert list(lane.ready) == [short]  # not started (a cancel still wins), not dropped
    assert lane.held


def test_a_held_row_wakes_the_claim_loop_as_soon_as_a_thread_is_free(dispatcher, lane):
    lane.held = True
    lane.in_flight = 2
    dispatcher._wake.clear()
    dispatcher._send(lane, delivery(lease_left=0.1))  # finishes at once (see the next test)
    assert lane.in_flight == 1 and dispatcher._wake.is_set()


def test_a_send_whose_lease_ran_short_before_a_thread_took_it_is_not_sent_but_released(dispatcher, channel):
    outcome = dispatcher._attempt(channel, delivery(lease_left=0.5 * SEND_TIMEOUT))
    assert channel.sent == []
    assert outcome.status == "retrying" and outcome.retry_delay == 0
    assert "not sent" in outcome.error


def test_a_send_with_lease_enough_is_sent(dispatcher, channel):
    outcome = dispatcher._attempt(channel, delivery(lease_left=2 * ONE_SEND))
    assert outcome.status == "sent" and len(channel.sent) == 1 and outcome.provider_message_id == "provider-id"


def test_a_channel_that_hangs_takes_only_its_own_lane_so_the_others_keep_their_threads(monkeypatch):
    monkeypatch.setattr(dispatcher_module.store, "start", lambda group, dispatcher: {d.outbox_id for d in group})
    hanging, healthy = RecordingChannel("hanging"), RecordingChannel("healthy")
    dispatcher = Dispatcher(channels={"hanging": hanging, "healthy": healthy}, threads=2,
                            retry_policy=RetryPolicy(0.1, 1, 5))
    for lane in dispatcher.lanes.values():
        lane.pool.shutdown()
        lane.pool = RecordingPool()
    stuck = dispatcher.lanes["hanging"]
    stuck.in_flight = stuck.max_started  # every thread of its lane taken, and as many queued
    stuck.ready.append(delivery(lease_left=60, outbox_id=1))
    assert stuck.room() == 0  # it claims nothing more for now
    free = dispatcher.lanes["healthy"]
    assert free.room() > 0 and free.in_flight == 0
    assert dispatcher._start_ready(stuck) is False and stuck.pool.submitted == []
    free.ready.append(delivery(lease_left=60, outbox_id=2))
    assert dispatcher._start_ready(free) is True and len(free.pool.submitted) == 1


def test_a_lane_claims_no_more_than_its_threads_can_send_in_one_lease():
    class Slow(RecordingChannel):
        def __init__(self, name):
            Channel.__init__(self, name, timeout=1.5)
            self.sent = []

    def lane(channel, lease_seconds):
        return Dispatcher(channels={channel.name: channel}, threads=8, batch_size=100, lease_seconds=lease_seconds,
                          retry_policy=RetryPolicy(0.1, 1, 5)).lanes[channel.name]

    slow, fast = lane(Slow("slow"), 5), lane(RecordingChannel("test"), 60)
    # Every send of `slow` may last 2 s (deadline and slack): 8 threads send 16 rows per 5 s lease.
    assert slow.room() == 16
    slow.in_flight = 10
    assert slow.room() == 0  # 6 free of 16: wait for half
    slow.in_flight = 8
    assert slow.room() == 8
    # A fast channel (a 1 s deadline, a 60 s lease) holds a batch, whatever is in flight.
    fast.in_flight = 10
    assert fast.room() == 100
    fast.ready.extend(delivery(60, i) for i in range(60))
    assert fast.room() == 0  # more than half a batch ready


def test_a_dispatcher_whose_lanes_are_full_claims_again_as_soon_as_one_has_room(dispatcher, lane):
    # (It does not wait for a wake-up: that stalled a fast channel between batches, 5x slower.)
    lane.ready.extend(delivery(60, i) for i in range(dispatcher.batch_size))
    assert dispatcher._claim() == (False, True)

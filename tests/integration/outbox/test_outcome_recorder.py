"""The outcome recorder (outbox/recorder.py) against the real database: one outcome the
database refuses costs the others nothing, and nothing kills the recorder's thread.

Outcomes here carry text that Channel.deliver would have cleaned: they stand for a backend or
a code path that let something through, which the recorder must survive on its own.
"""

from __future__ import annotations

import pytest

from notifications.models import Notification
from outbox import metrics, store
from outbox.recorder import OutcomeRecorder
from tests.helpers import claim, enqueue, wait_until


@pytest.fixture
def started(transactional_db):
    """Enqueue, claim and START `count` notifications; their deliveries."""

    def start(count: int) -> list[store.Delivery]:
        enqueue(count)
        deliveries = claim(count, channels=["fake"], start=True)
        return sorted(deliveries, key=lambda d: d.outbox_id)

    return start


def record(*outcomes: store.Outcome) -> OutcomeRecorder:
    recorder = OutcomeRecorder("d1")
    recorder.start()
    for outcome in outcomes:
        recorder.put(outcome)
    recorder.stop()  # records everything queued, then ends the thread
    return recorder


@pytest.mark.parametrize("poison", ["id\x00with a NUL", "a lone \ud800 surrogate"])
def test_an_outcome_the_database_refuses_costs_the_rest_of_its_batch_nothing(started, poison):
    deliveries = started(7)
    outcomes = [store.Outcome(d, "sent", provider_message_id=f"prov-{i}") for i, d in enumerate(deliveries)]
    outcomes[3] = store.Outcome(deliveries[3], "sent", provider_message_id=poison)
    outcomes[5] = store.Outcome(deliveries[5], "retrying", error=poison, retry_delay=30)
    recorder = record(*outcomes)

    statuses = {str(n.pk): n for n in Notification.objects.all()}
    for i, delivery in enumerate(deliveries):
        notification = statuses[delivery.notification_id]
        if i in (3, 5):
            assert notification.status == "failed"
            kind = "sent" if i == 3 else "retrying"
            assert notification.last_error.startswith(f"the outcome of attempt 1 ({kind}) could not be recorded")
        else:
            assert (notification.status, notification.provider_message_id) == ("sent", f"prov-{i}")
    assert recorder.problem == "" and recorder.sent == 6  # counted as what they were


def test_a_failure_reporting_an_attempt_records_it_all_the_same(started, monkeypatch):
    (delivery,) = started(1)

    def broken(*args, **kwargs):
        raise RuntimeError("metrics backend broken")

    monkeypatch.setattr(metrics, "observe_attempt", broken)
    record(store.Outcome(delivery, "sent", provider_message_id="prov-1"))
    assert Notification.objects.get(pk=delivery.notification_id).status == "sent"


def test_a_server_that_cannot_take_writes_is_waited_for_and_no_outcome_turns_into_a_failure(started):
    # A failover that left us on a read-only server: every write is refused with an
    # InternalError (read_only_sql_transaction), which says nothing about the outcomes' data.
    # The recorder waits and writes the batch again; it must not halve it down to single
    # outcomes and record them as failed.
    from django.db import connection

    deliveries = started(3)
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    recorder = OutcomeRecorder("d1")
    try:
        recorder.start()  # its thread opens its own connection: a read-only one
        for i, delivery in enumerate(deliveries):
            recorder.put(store.Outcome(delivery, "sent", provider_message_id=f"prov-{i}"))
        wait_until(lambda: "read-only transaction" in recorder.problem, message="the refusal seen")
        assert Notification.objects.filter(status="sent").count() == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
    recorder.stop()  # its fresh connection after the refusal is a writable one
    assert sorted(Notification.objects.values_list("status", "provider_message_id")) == [
        ("sent", "prov-0"), ("sent", "prov-1"), ("sent", "prov-2")]
    assert recorder.problem == "" and (recorder.sent, recorder.failed) == (3, 0)

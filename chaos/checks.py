"""The verdict of a run: the invariants of at-least-once, and the figures, computed from three
independent records: what the client was acknowledged (the load driver), what the database
holds, and what the provider received.

Each check is a count that must be 0:
- lost: an acknowledged notification that is missing from the database, is not `sent` (or
  `failed` after a permanent refusal by the provider), or never reached the provider.
- stuck: outbox rows left (leased or not), or notifications not in a final status.
- idempotency_violations: a notification not created by exactly one Idempotency-Key, or a key
  whose notifications differ from what the client was acknowledged.
- same_attempt_sent_twice: one attempt (notification, attempt number) reached the provider
  twice: two dispatchers would have sent under one lease.
- sends_after_recorded_success: an attempt numbered after the recorded `sent` one reached the
  provider: a row was claimed again after its success was recorded.
- stale_outcomes: the recorded outcome is not the latest attempt's (fencing failed), or a
  notification has other than exactly one final event, or events after it.
- unexplained_duplicates: a delivery beyond the recorded one that neither the provider's
  ambiguity (slow answer, error after accepting, an answer that came too late) nor a lost
  lease (crash or stall between the send and its record) explains.
- sends_overlapping_a_takeover: a dispatcher process that the run did not stop was still
  sending an attempt (its send ended, per its log) after another dispatcher had taken the row
  over (the lost-lease event's time): two dispatchers were sending one row at once. (Log,
  provider and database timestamps are compared: one host, one clock.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from statistics import mean
from typing import Any, Iterable

from .database import RunDatabase
from .load import RequestOutcome
from .provider import ACCEPTED

FINAL = ("sent", "failed", "cancelled", "expired")
LEASE_LOST = "lease expired during the send"


def evaluate(database: RunDatabase, outcomes: Iterable[RequestOutcome], provider_requests: list[list[Any]],
             *, stalled_pids: Iterable[int] = (), send_ends: dict[tuple[int, str, int], float] | None = None,
             ) -> dict[str, Any]:
    """Checks and figures of a drained run (see the module docstring). `stalled_pids`: the
    dispatcher processes that the run stopped (SIGSTOP), whose late sends are the stall's.
    `send_ends`: (pid, notification id, attempt) -> when the send ended, from the dispatchers'
    logs (chaos.fleet); without it, the provider's arrival time stands in."""
    send_ends = send_ends or {}
    stalled_pids = set(stalled_pids)
    outcomes = list(outcomes)
    notifications = {row[0]: row[1:] for row in database.query(
        "SELECT id::text, status, attempts, last_error, provider_message_id FROM notification")}
    events: dict[str, list[tuple]] = defaultdict(list)
    # (status, attempt, error, provider message id, dispatcher, time as Unix seconds)
    for nid, *event in database.query(
            "SELECT notification_id::text, status, attempt, error, provider_message_id, dispatcher, "
            "extract(epoch FROM created_at)::float8 FROM notification_event ORDER BY notification_id, created_at, id"):
        events[nid].append(tuple(event))
    keys = {key: list(ids) for key, ids in database.query(
        "SELECT key, notification_ids::text[] FROM idempotency_key")}
    outbox_rows, outbox_leased, outbox_sending = database.query(
        "SELECT count(*), count(*) FILTER (WHERE locked_by IS NOT NULL), count(*) FILTER (WHERE sending) FROM outbox")[0]

    # notification id -> [(time, attempt, outcome, provider id, sender pid)], in arrival order
    requests: dict[str, list[tuple]] = defaultdict(list)
    for at, nid, attempt, outcome, provider_id, pid in provider_requests:
        requests[nid].append((at, attempt, outcome, provider_id, pid))
    for rows in requests.values():
        rows.sort()

    acked: dict[str, str] = {}  # notification id -> key
    acked_twice = 0
    for outcome in outcomes:
        for nid in outcome.ids:
            acked_twice += nid in acked
            acked[nid] = outcome.key

    # --- lost -------------------------------------------------------------------------------------
    missing = [nid for nid in acked if nid not in notifications]
    not_final_ok, not_delivered = [], []
    for nid in acked:
        if nid not in notifications:
            continue
        status, _, last_error, _ = notifications[nid]
        refused = any(r[2] == "4xx" for r in requests.get(nid, ()))
        if not (status == "sent" or (status == "failed" and refused and not last_error.startswith("gave up"))):
            not_final_ok.append(nid)
        if status == "sent" and not any(r[2] in ACCEPTED for r in requests.get(nid, ())):
            not_delivered.append(nid)
    lost = set(missing) | set(not_final_ok) | set(not_delivered)

    # --- stuck ------------------------------------------------------------------------------------
    pending = [nid for nid, row in notifications.items() if row[0] not in FINAL]
    stuck = outbox_rows + len(pending)

    # --- idempotency ------------------------------------------------------------------------------
    referenced = Counter(nid for ids in keys.values() for nid in ids)
    orphans = [nid for nid in notifications if referenced[nid] == 0]
    multi = [nid for nid, n in referenced.items() if n > 1]
    acked_keys = {o.key: o.ids for o in outcomes if o.acknowledged}
    mismatched = [key for key, ids in acked_keys.items() if keys.get(key) != ids]
    committed_unacknowledged = [key for key in keys if key not in acked_keys]
    idempotency_violations = len(orphans) + len(multi) + len(mismatched) + acked_twice

    # --- deliveries, duplicates, fencing ---------------------------------------------------------
    same_attempt = 0
    after_success = 0
    outside_lease = []
    stale = 0
    duplicates = Counter()  # cause -> count
    delivered = 0
    for nid, (status, attempts, last_error, provider_message_id) in notifications.items():
        rows = requests.get(nid, [])
        same_attempt += sum(1 for n in Counter(r[1] for r in rows).values() if n > 1)
        accepted = [r for r in rows if r[2] in ACCEPTED]
        delivered += bool(accepted)
        history = events.get(nid, [])
        finals = [i for i, e in enumerate(history) if e[0] in FINAL]
        if status in FINAL and (len(finals) != 1 or finals[0] != len(history) - 1 or history[finals[0]][0] != status):
            stale += 1
        recorded = None
        if status == "sent":
            by_id = {r[3]: r for r in rows if r[2] == "ok"}
            recorded = by_id.get(provider_message_id)
            # The recorded answer must be an "ok" of this notification, from its latest attempt.
            if recorded is None or (rows and recorded[1] < max(r[1] for r in rows)):
                stale += 1
            sent_attempt = history[finals[0]][1] if finals else attempts
            after_success += sum(1 for r in rows if r[1] > sent_attempt)
        retrying = defaultdict(list)  # attempt -> errors of its 'retrying' events
        for event_status, attempt, error, _, dispatcher, at in history:
            if event_status != "retrying":
                continue
            retrying[attempt].append(error)
            if LEASE_LOST in error:
                # Another dispatcher took this attempt's row over at `at`: the previous holder
                # must have finished sending it by then (a send starts only if it can end
                # inside the lease), unless the run had stopped it (a stall).
                holder = _pid(dispatcher)
                if holder not in stalled_pids:
                    for r in rows:
                        if r[1] == attempt and r[4] == holder:
                            ended = send_ends.get((holder, nid, attempt), r[0])
                            if ended > at:
                                outside_lease.append((nid, attempt, holder, round(ended - at, 3)))
        for row in accepted:
            if row is recorded:
                continue
            if recorded is None and row is accepted[0]:
                continue  # not sent (a permanent refusal): the first delivery is no duplicate
            duplicates[_duplicate_cause(row, retrying)] += 1

    # --- attempts ---------------------------------------------------------------------------------
    acked_rows = [notifications[nid] for nid in acked if nid in notifications]
    attempts = [row[1] for row in acked_rows]
    requests_per = [len(requests.get(nid, ())) for nid in acked]
    statuses = Counter(row[0] for row in notifications.values())
    total_duplicates = sum(duplicates.values())

    checks = {
        "lost": len(lost),
        "stuck": stuck,
        "idempotency_violations": idempotency_violations,
        "same_attempt_sent_twice": same_attempt,
        "sends_after_recorded_success": after_success,
        "stale_outcomes": stale,
        "unexplained_duplicates": duplicates["unexplained"],
        "sends_overlapping_a_takeover": len(outside_lease),
    }
    return {
        "checks": checks,
        "samples": {  # a few ids per failed check, to start an investigation from
            "lost": sorted(lost)[:10], "pending": pending[:10], "orphans": orphans[:10],
            "mismatched_keys": mismatched[:10],
            "sends_overlapping_a_takeover": outside_lease[:10],  # (id, attempt, pid, seconds past the takeover)
        },
        "delivery": {
            "acknowledged": len(acked),
            "notifications_in_db": len(notifications),
            "statuses": dict(sorted(statuses.items())),
            "lost_missing_in_db": len(missing),
            "lost_not_sent": len(not_final_ok),
            "lost_never_delivered": len(not_delivered),
            "delivered": delivered,
            "provider_requests": len(provider_requests),
            "duplicates": total_duplicates,
            "duplicate_rate": round(total_duplicates / len(acked), 5) if acked else 0.0,
            "duplicates_by_cause": dict(sorted(duplicates.items())),
            "attempts_mean": round(mean(attempts), 3) if attempts else 0.0,
            "attempts_max": max(attempts, default=0),
            "provider_requests_per_notification_mean": round(mean(requests_per), 3) if requests_per else 0.0,
            "provider_requests_per_notification_max": max(requests_per, default=0),
            "lease_expired_events": sum(1 for h in events.values() for e in h if e[0] == "retrying" and LEASE_LOST in e[2]),
        },
        "outbox": {"rows": outbox_rows, "leased": outbox_leased, "sending": outbox_sending},
        "idempotency": {
            "keys_acknowledged": len(acked_keys),
            "keys_in_db": len(keys),
            "committed_but_unacknowledged_keys": len(committed_unacknowledged),
            "notifications_without_key": len(orphans),
            "notifications_with_several_keys": len(multi),
            "keys_with_other_notifications": len(mismatched),
            "ids_acknowledged_twice": acked_twice,
        },
    }


def _duplicate_cause(row: tuple, retrying: dict[int, list[str]]) -> str:
    """Why the provider got this delivery and the database did not record it as the success."""
    attempt, outcome = row[1], row[2]
    if outcome in ("slow", "accepted_error"):
        return "provider_error_after_accepting"
    # START counts an attempt once, but a START retried after a commit whose answer was lost
    # counts it twice: the attempt's event may then carry the next number.
    errors = retrying.get(attempt, []) + retrying.get(attempt + 1, [])
    if any(LEASE_LOST in error for error in errors):
        return "lease_lost_before_record"  # a crash, stall or outage between the send and its record
    if errors:
        return "answer_lost"  # the provider said ok, too late or cut off: the sender saw an error
    return "unexplained"


def _pid(dispatcher: str) -> int:
    """The pid in a dispatcher id (host:pid:random; see outbox.dispatcher.new_dispatcher_id)."""
    try:
        return int(dispatcher.rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return 0

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
- attempts_over_the_cap: a notification with more attempts, or more requests at the provider,
  than OUTBOX_MAX_ATTEMPTS (every channel's notifications, the isolation check's included).

The figures are those of the load's channel; the isolation check's own notifications
(chaos.isolation) count for `stuck` and `attempts_over_the_cap` only.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from statistics import mean
from typing import Any, Iterable

from .database import RunDatabase
from .load import RequestOutcome
from .provider import ACCEPTED, ACCEPTED_UNSEEN, ANSWERED_2XX

FINAL = ("sent", "failed", "cancelled", "expired")
LEASE_LOST = "lease expired during the send"


def evaluate(database: RunDatabase, outcomes: Iterable[RequestOutcome], provider_requests: list[list[Any]],
             *, channel: str, max_attempts: int, stalled_pids: Iterable[int] = (),
             send_ends: dict[tuple[int, str, int], float] | None = None) -> dict[str, Any]:
    """Checks and figures of a drained run (see the module docstring). `stalled_pids`: the
    dispatcher processes that the run stopped (SIGSTOP), whose late sends are the stall's.
    `send_ends`: (pid, notification id, attempt) -> when the send ended, from the dispatchers'
    logs (chaos.fleet); without it, the provider's arrival time stands in."""
    send_ends = send_ends or {}
    stalled_pids = set(stalled_pids)
    outcomes = list(outcomes)
    notifications = {row[0]: row[1:] for row in database.query(
        "SELECT id::text, status, attempts, last_error, provider_message_id FROM notification WHERE channel = %s",
        [channel])}
    events: dict[str, list[tuple]] = defaultdict(list)
    # (status, attempt, error, provider message id, dispatcher, time as Unix seconds)
    for nid, *event in database.query(
            "SELECT e.notification_id::text, e.status, e.attempt, e.error, e.provider_message_id, e.dispatcher, "
            "extract(epoch FROM e.created_at)::float8 FROM notification_event e "
            "JOIN notification n ON n.id = e.notification_id WHERE n.channel = %s "
            "ORDER BY e.notification_id, e.created_at, e.id", [channel]):
        events[nid].append(tuple(event))
    pending_anywhere, over_cap_attempts = database.query(
        "SELECT count(*) FILTER (WHERE status NOT IN ('sent', 'failed', 'cancelled', 'expired')), "
        "count(*) FILTER (WHERE attempts > %s) FROM notification", [max_attempts])[0]
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
    stuck = outbox_rows + pending_anywhere

    # --- the attempt cap --------------------------------------------------------------------------
    over_cap_requests = sum(1 for rows in requests.values() if len(rows) > max_attempts)

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
            sent_attempt = history[finals[0]][1] if finals else attempts
            recorded = _recorded_answer(rows, sent_attempt, provider_message_id)
            # The recorded answer must be a 2xx of this notification, from its latest attempt.
            if recorded is None or (rows and recorded[1] < max(r[1] for r in rows)):
                stale += 1
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

    attempts_distribution = Counter(row[1] for row in acked_rows)
    checks = {
        "lost": len(lost),
        "stuck": stuck,
        "idempotency_violations": idempotency_violations,
        "same_attempt_sent_twice": same_attempt,
        "sends_after_recorded_success": after_success,
        "stale_outcomes": stale,
        "unexplained_duplicates": duplicates["unexplained"],
        "sends_overlapping_a_takeover": len(outside_lease),
        "attempts_over_the_cap": over_cap_attempts + over_cap_requests,
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
            "attempts_distribution": {str(k): v for k, v in sorted(attempts_distribution.items())},
            "max_attempts": max_attempts,
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
    if outcome in ACCEPTED_UNSEEN:
        return "provider_error_after_accepting"
    # START counts an attempt once, but a START retried after a commit whose answer was lost
    # counts it twice: the attempt's event may then carry the next number.
    errors = retrying.get(attempt, []) + retrying.get(attempt + 1, [])
    if any(LEASE_LOST in error for error in errors):
        return "lease_lost_before_record"  # a crash, stall or outage between the send and its record
    if errors:
        return "answer_lost"  # the provider said ok, too late or cut off: the sender saw an error
    return "unexplained"


def _recorded_answer(rows: list[tuple], attempt: int, provider_message_id: str) -> tuple | None:
    """The provider's request that the recorded `sent` stands for: a 2xx answer to `attempt`,
    whose id is the recorded one (the provider's id as it gave it, or as Channel.deliver made
    it safe: a hostile id's NUL and surrogate become " \ufffd"; an unreadable answer gives "")."""
    for row in rows:
        if row[1] != attempt or row[2] not in ANSWERED_2XX:
            continue
        if provider_message_id in (row[3], f"{row[3]} \ufffd") or (provider_message_id == "" and row[2] != "ok"):
            return row
    return None


def _pid(dispatcher: str) -> int:
    """The pid in a dispatcher id (host:pid:random; see outbox.dispatcher.new_dispatcher_id)."""
    try:
        return int(dispatcher.rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return 0

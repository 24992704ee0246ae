"""The outcome recorder: one thread of a dispatcher process that writes what its sends ended in.

Send threads hand each outcome over with `put` (which cannot fail) and go on. The recorder takes
whatever has queued up, logs and counts each attempt, and writes the batch with
outbox.store.record_outcomes, one statement per kind of outcome.

It never dies and never lets one outcome cost the others:
- The database down (a connection error): the batch is written again, with backoff, until it
  is, or until every lease in it has run out (then the rows are claimed again and sent again,
  which at-least-once allows). Meanwhile `problem` says so, and the dispatcher claims nothing.
- A batch the database refuses for its data (an error that is not the connection's): it is
  halved until the outcome that poisons it is found; the rest are written, and that one is
  written as `failed` with a plain reason instead.
- Anything else (a bug here): logged, and the loop goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Mapping, Sequence

from django.db import InterfaceError, InternalError, OperationalError, connection

from channels.policy import ChannelPolicy

from . import metrics, store
from .backoff import Backoff

logger = logging.getLogger("outbox.dispatcher")

# The database cannot be reached (down, restarting, the connection lost), or cannot take
# writes or answer in step now (InternalError: a server read-only after a failover, an
# internal error, or the driver out of step with a pooler whose server connection died: the
# cluster run's "received 2 results from command 'BEGIN'"): try the same again. None of these
# is about one outcome's data, so none may turn a batch into outcomes recorded as failed.
CONNECTION_ERRORS = (OperationalError, InterfaceError, InternalError)
MAX_BATCH = 1000
# After the first outcome of a batch, wait this long for more: the outcomes of a claim's rows
# come within milliseconds of each other, and one statement for them all costs the database
# a fraction of one each. (A status shows 'sent' that much later; the send is not delayed.)
LINGER_SECONDS = 0.005
_STOP = object()  # end-of-work marker on the queue


class OutcomeRecorder:
    """Writes the outcomes of dispatcher `dispatcher_id`'s sends (see the module docstring)."""

    def __init__(self, dispatcher_id: str, *, policies: Mapping[str, ChannelPolicy] | None = None):
        self.dispatcher_id = dispatcher_id
        self.policies = dict(policies or {})
        self.sent = self.failed = self.retried = 0
        # Why outcomes cannot be recorded right now; "" while they can.
        self.problem = ""
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, outcome: store.Outcome) -> None:
        """Queue an outcome to be recorded (never blocks, never raises)."""
        self._queue.put(outcome)

    def backlog(self) -> int:
        """Outcomes queued and not yet taken for writing."""
        return self._queue.qsize()

    def stop(self) -> None:
        """Record everything queued so far, then end the thread. Call after the last put."""
        self._queue.put(_STOP)
        self._thread.join()

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            linger_until = time.monotonic() + LINGER_SECONDS
            while len(batch) < MAX_BATCH and batch[-1] is not _STOP:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, linger_until - time.monotonic())))
                except queue.Empty:
                    break
            if _STOP in batch:
                batch.remove(_STOP)
                stopping = True
            if not batch:
                continue
            try:
                self._report(batch)
                self._record(batch)
                self._count_into_breakers(batch)
            except Exception:  # a bug here must not end the recording of everything after it
                logger.exception("dispatcher %s: recording %d outcomes failed unexpectedly", self.dispatcher_id, len(batch))
        connection.close()

    def _report(self, outcomes: Sequence[store.Outcome]) -> None:
        """One log line and the metrics of each attempt; a failure here records nothing less."""
        for outcome in outcomes:
            try:
                delivery = outcome.delivery
                metrics.observe_attempt(delivery.channel, outcome.status, outcome.duration)
                fields = {"notification_id": str(delivery.notification_id), "channel": delivery.channel,
                          "attempt": delivery.attempt, "outcome": outcome.status,
                          "duration_ms": round(outcome.duration * 1000, 1), "ended_at": outcome.ended_at}
                if outcome.error:
                    fields["error"] = outcome.error
                logger.info(
                    "delivery notification=%s channel=%s attempt=%d outcome=%s duration_ms=%.1f%s",
                    delivery.notification_id, delivery.channel, delivery.attempt, outcome.status,
                    outcome.duration * 1000, f" error={outcome.error!r}" if outcome.error else "", extra=fields,
                )
            except Exception:
                logger.exception("dispatcher %s: reporting an attempt failed", self.dispatcher_id)

    def _record(self, outcomes: Sequence[store.Outcome]) -> None:
        """Write the batch until it is written, or until its leases have run out."""
        backoff = Backoff()
        deadline = max(o.delivery.lease_expires for o in outcomes)
        while True:
            try:
                recorded = self._write(outcomes)
                break
            except CONNECTION_ERRORS as exc:
                connection.close()  # a fresh connection next time (the server may have restarted)
                self._set_problem(f"cannot record outcomes: {type(exc).__name__}: {str(exc).strip()[:200]}")
                if time.monotonic() > deadline:
                    logger.error(
                        "dispatcher %s: could not record %d outcomes before their leases expired (%s); "
                        "they will be sent again", self.dispatcher_id, len(outcomes), exc,
                    )
                    metrics.count_unrecorded("leases_expired", len(outcomes))
                    return
                wait = backoff.next()
                logger.warning("dispatcher %s: recording outcomes failed (%s); retrying in %.1fs",
                               self.dispatcher_id, exc, wait)
                time.sleep(wait)
        self._set_problem("")
        for outcome in outcomes:
            if outcome.status == "sent":
                self.sent += 1
            elif outcome.status == "failed":
                self.failed += 1
            else:
                self.retried += 1
        if recorded < len(outcomes):
            logger.warning(
                "dispatcher %s: %d of %d outcomes not recorded: their lease expired and the rows were claimed again",
                self.dispatcher_id, len(outcomes) - recorded, len(outcomes),
            )

    def _write(self, outcomes: Sequence[store.Outcome]) -> int:
        """Write outcomes; a batch refused for its data is halved until the culprit is found."""
        try:
            return store.record_outcomes(outcomes, dispatcher=self.dispatcher_id)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the data of one outcome, most likely
            if len(outcomes) > 1:
                middle = len(outcomes) // 2
                return self._write(outcomes[:middle]) + self._write(outcomes[middle:])
            return self._write_refused(outcomes[0], exc)

    def _write_refused(self, outcome: store.Outcome, exc: Exception) -> int:
        """An outcome the database refused: record the attempt as failed, in plain words."""
        delivery = outcome.delivery
        logger.error("dispatcher %s: notification=%s: the database refused its outcome (%s: %s); recorded as failed",
                     self.dispatcher_id, delivery.notification_id, type(exc).__name__, ascii(str(exc))[:300])
        metrics.count_unrecorded("refused", 1)
        reason = (f"the outcome of attempt {delivery.attempt} ({outcome.status}) could not be recorded: "
                  f"the database refused it ({type(exc).__name__})")
        try:
            return store.record_outcomes([store.Outcome(delivery, "failed", error=reason)], dispatcher=self.dispatcher_id)
        except CONNECTION_ERRORS:
            raise
        except Exception:  # nothing plainer to write: the lease runs out, and the row is claimed again
            logger.exception("dispatcher %s: notification=%s: not even its failure could be recorded",
                             self.dispatcher_id, delivery.notification_id)
            return 0

    def _count_into_breakers(self, outcomes: Sequence[store.Outcome]) -> None:
        """The batch's outcomes into the circuit breakers and pauses of their channels. A
        failure here costs the breakers one batch's count, nothing else."""
        try:
            transitions = store.record_channel_outcomes(outcomes, self.policies)
        except CONNECTION_ERRORS as exc:
            connection.close()
            logger.warning("dispatcher %s: circuit breakers not updated (%s)", self.dispatcher_id, exc)
            return
        for t in transitions:
            breaker = self.policies[t.channel].circuit_breaker
            if t.after == "open":
                logger.warning("channel %s: circuit breaker %s -> open after %d consecutive transient failures; "
                               "no sends for %gs", t.channel, t.before, t.failures, breaker.cool_down if breaker else 0)
            else:
                logger.warning("channel %s: circuit breaker %s -> %s", t.channel, t.before, t.after)
            metrics.count_breaker_transition(t.channel, t.after)

    def _set_problem(self, problem: str) -> None:
        if problem != self.problem:
            if problem:
                logger.warning("dispatcher %s: %s; claiming nothing until outcomes are recorded again",
                               self.dispatcher_id, problem)
            else:
                logger.info("dispatcher %s: outcomes are recorded again", self.dispatcher_id)
            self.problem = problem
            metrics.set_cannot_record(bool(problem))

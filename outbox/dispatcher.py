"""One dispatcher process: claim due outbox rows, send them on a thread pool, record outcomes.

Three kinds of threads share the work:
- the main thread claims rows (one short transaction per batch) into a ready queue, and as
  threads come free STARTs a group of them (one statement: from here on a cancel is refused)
  and hands it to the pool;
- the pool's threads send, outside any transaction, and queue each outcome;
- the recorder thread writes queued outcomes in batches (outbox.store.record_outcomes).
A listener thread holds a LISTEN connection and wakes the main thread when new work commits;
without a notification the main thread still looks every poll interval (scheduled retries,
expired leases, missed notifications).

At-least-once: a row stays in the outbox until its outcome is recorded. If this process dies,
its leases expire and other dispatchers claim the rows again.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from django.db import DatabaseError, InterfaceError, connection

from channels.base import Channel
from channels.errors import PermanentChannelError, TransientChannelError

from . import metrics, store
from .heartbeat import Heartbeat
from .listen import OutboxListener
from .retry import RetryPolicy

logger = logging.getLogger("outbox.dispatcher")

_STOP = object()  # end-of-work marker on the outcome queue


def new_dispatcher_id() -> str:
    """host:pid:random, unique per process lifetime; shown in leases and history."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class Backoff:
    """Exponential wait between attempts to reach the database: 0.5 s doubling to 30 s."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        wait, self.current = self.current, min(self.cap, self.current * 2)
        return wait

    def reset(self) -> None:
        self.current = self.first


class Dispatcher:
    """Delivers outbox rows for `channels` until `stop()` is called (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        *,
        channels: dict[str, Channel],
        threads: int = 16,
        batch_size: int = 100,
        lease_seconds: float = 60.0,
        poll_interval: float = 1.0,
        notify_debounce: float = 0.01,
        retry_policy: RetryPolicy,
        dispatcher_id: str | None = None,
    ):
        self.channels = channels
        self.threads = threads
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry_policy = retry_policy
        self.id = dispatcher_id or new_dispatcher_id()
        # At most two sends per thread are started at once (one running, one queued), so a
        # started send waits at most one send's time for a thread.
        self.max_started = 2 * threads
        # After a NOTIFY, look once more when the intake's debounce window has passed: commits
        # inside the window skipped their own NOTIFY.
        self.recheck_delay = notify_debounce + 0.005

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ready: deque[store.Delivery] = deque()  # claimed, not started
        self._in_flight = 0  # started, not finished
        self._in_flight_lock = threading.Lock()
        self._recheck_at: float | None = None
        self._held = False  # ready rows wait for a free thread (see _start_ready)
        self._outcomes: queue.Queue = queue.Queue()
        self.sent = self.failed = self.retried = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; in-flight sends finish and are recorded, then run() returns."""
        self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """The dispatcher's loop; returns the process exit code (0 after a graceful stop)."""
        logger.info(
            "dispatcher %s started: channels=%s threads=%d batch=%d lease=%.0fs",
            self.id, ",".join(sorted(self.channels)), self.threads, self.batch_size, self.lease_seconds,
        )
        heartbeat = Heartbeat(self)  # the `dispatcher` table's row of this process
        heartbeat.start()
        listener = OutboxListener(on_notify=self._notified, stop=self._stop)
        listener.start()
        recorder = threading.Thread(target=self._record_loop, name="recorder", daemon=True)
        recorder.start()
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="send")
        try:
            self._claim_loop(pool)
        finally:
            pool.shutdown(wait=True)  # in-flight sends finish ...
            self._outcomes.put(_STOP)
            recorder.join()  # ... and their outcomes are recorded
            heartbeat.stop()  # the last heartbeat: final counts and stopped_at
            connection.close()
        logger.info("dispatcher %s stopped: sent=%d retried=%d failed=%d", self.id, self.sent, self.retried, self.failed)
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one exits at once (leases cover the rest)."""

        def handle(signum, frame):
            if self._stop.is_set():
                os._exit(1)
            logger.info("dispatcher %s: %s received, finishing in-flight sends", self.id, signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored under a supervisor
            signal.signal(signal.SIGINT, handle)

    # --- claiming and starting ----------------------------------------------------------------

    def _claim_loop(self, pool: ThreadPoolExecutor) -> None:
        """Keep the pool fed: claim rows into `ready`, START them as threads come free.

        Claimed rows wait in `ready` unstarted, so a cancel still wins over them; a START
        marks a group as being sent right before the pool takes it.
        """
        backoff = Backoff()
        channel_names = sorted(self.channels)
        may_claim = True
        while not self._stop.is_set():
            self._wake.clear()
            worked = False
            try:
                if self._ready and self._in_flight < self.max_started:
                    worked |= self._start_ready(pool)
                if may_claim and len(self._ready) <= self.batch_size // 2:
                    limit = self.batch_size - len(self._ready)
                    claimed = store.claim(dispatcher=self.id, limit=limit,
                                          lease_seconds=self.lease_seconds, channels=channel_names)
                    self._ready.extend(claimed)
                    may_claim = len(claimed) == limit  # a full batch: more may be due
                    worked |= bool(claimed)
            except (DatabaseError, InterfaceError) as exc:
                wait = backoff.next()
                logger.warning("dispatcher %s: database error (%s); retrying in %.1fs", self.id, exc, wait)
                connection.close()  # a fresh connection next time (the server may have restarted)
                self._stop.wait(wait)
                continue
            backoff.reset()
            if not worked:
                self._wake.wait(self._idle_timeout())
                may_claim = True  # woken by new work, by free threads, or the poll interval
        self._release_ready()

    def _start_ready(self, pool: ThreadPoolExecutor) -> bool:
        """START as many ready rows as the pool can take soon, and hand them to it."""
        room = self.max_started - self._in_flight
        group, held, too_late = [], [], []
        for _ in range(min(room, len(self._ready))):
            delivery = self._ready.popleft()
            if not self._lease_allows_send(delivery):
                too_late.append(delivery)
                continue
            # Beyond the free threads, a started send waits in the pool's queue, up to one
            # send's time, before it runs: its lease must cover the wait too. If it cannot, it
            # stays here, unstarted, until a thread is free.
            if self._in_flight + len(group) >= self.threads and not self._lease_allows_send(delivery, queued=True):
                held.append(delivery)
                continue
            group.append(delivery)
        self._ready.extendleft(reversed(held))
        self._held = bool(held)
        if too_late:  # given back at once, rather than left leased until the lease ends
            store.release(too_late)
        if not group:
            return bool(too_late)
        try:
            startable = store.start(group, dispatcher=self.id)
        except BaseException:
            self._ready.extendleft(reversed(group))  # not started: try again
            raise
        for delivery in group:
            if delivery.outbox_id not in startable:
                logger.info("notification=%s not sent: cancelled, expired or lease lost before the send",
                            delivery.notification_id)
                continue
            with self._in_flight_lock:
                self._in_flight += 1
            pool.submit(self._send, delivery)
        return True

    def _lease_allows_send(self, delivery: store.Delivery, *, queued: bool = False) -> bool:
        # Start a send only if it can finish inside the lease: otherwise another dispatcher
        # could claim the row while this one is still sending it. A queued send may first
        # wait one send's time for a thread.
        timeout = self.channels[delivery.channel].send_timeout
        if time.monotonic() + timeout * (2 if queued else 1) <= delivery.lease_expires:
            return True
        if queued:
            return False
        logger.warning("notification=%s: lease too close to expiry to send; released for the next claim",
                       delivery.notification_id)
        return False

    def _release_ready(self) -> None:
        if not self._ready:
            return
        try:
            store.release(list(self._ready))
        except (DatabaseError, InterfaceError) as exc:  # their leases will expire instead
            logger.warning("dispatcher %s: could not release %d unstarted rows (%s)", self.id, len(self._ready), exc)
        self._ready.clear()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        if self._recheck_at is None:
            return self.poll_interval
        if self._recheck_at <= now:
            self._recheck_at = None  # the claim just made was the recheck
            return self.poll_interval
        return min(self.poll_interval, self._recheck_at - now)

    def _notified(self) -> None:
        self._recheck_at = time.monotonic() + self.recheck_delay
        self._wake.set()

    # --- sending ------------------------------------------------------------------------------

    def _send(self, delivery: store.Delivery) -> None:
        try:
            self._outcomes.put(self._attempt(delivery))
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
                # Wake the claim loop when half the started capacity is free: STARTs then
                # come in groups of at least `threads` rows, not one per finished send.
                half_free = self._in_flight == self.threads
                # Rows held for a free thread are started as soon as there is one.
                wake = half_free or (self._held and self._in_flight < self.threads)
            if wake:
                self._wake.set()

    def _attempt(self, delivery: store.Delivery) -> store.Outcome:
        channel = self.channels[delivery.channel]
        started = time.monotonic()
        if started + channel.send_timeout > delivery.lease_expires:
            # START or the wait for a thread took longer than the lease allowed for: sent now,
            # it could outlast the lease while another dispatcher sends it too. Not sent; the
            # row is released at once (its attempt is counted, with this error).
            logger.warning("notification=%s: lease too close to expiry when a thread was free; not sent, released",
                           delivery.notification_id)
            return store.Outcome(delivery, "retrying", error="not sent: the lease would have run out during the send")
        try:
            provider_id = channel.send(delivery.message)
            outcome = store.Outcome(delivery, "sent", provider_message_id=provider_id or "")
        except PermanentChannelError as exc:
            outcome = store.Outcome(delivery, "failed", error=_describe(exc))
        except TransientChannelError as exc:
            outcome = self._transient(delivery, _describe(exc), exc.retry_after)
        except Exception as exc:  # a bug in a channel must not stop the dispatcher
            logger.exception("notification=%s channel=%s: unexpected error in send", delivery.notification_id, delivery.channel)
            outcome = self._transient(delivery, f"unexpected {type(exc).__name__}: {exc}", None)
        elapsed = time.monotonic() - started
        metrics.observe_attempt(delivery.channel, outcome.status, elapsed)
        fields = {"notification_id": str(delivery.notification_id), "channel": delivery.channel,
                  "attempt": delivery.attempt, "outcome": outcome.status, "duration_ms": round(elapsed * 1000, 1)}
        if outcome.error:
            fields["error"] = outcome.error
        logger.info(
            "delivery notification=%s channel=%s attempt=%d outcome=%s duration_ms=%.1f%s",
            delivery.notification_id, delivery.channel, delivery.attempt, outcome.status,
            elapsed * 1000, f" error={outcome.error!r}" if outcome.error else "", extra=fields,
        )
        return outcome

    def _transient(self, delivery: store.Delivery, error: str, retry_after: float | None) -> store.Outcome:
        delay = self.retry_policy.delay(delivery.attempt, retry_after)
        if delay is None:
            return store.Outcome(delivery, "failed", error=f"gave up after {delivery.attempt} attempts: {error}")
        return store.Outcome(delivery, "retrying", error=error, retry_delay=delay)

    # --- recording ----------------------------------------------------------------------------

    def _record_loop(self) -> None:
        """Write outcomes in batches: whatever has queued up while the last batch was written."""
        stopping = False
        while not stopping:
            batch = [self._outcomes.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                batch.remove(_STOP)
                stopping = True
            if batch:
                self._record(batch)
        connection.close()

    def _record(self, outcomes: Sequence[store.Outcome]) -> None:
        """Record until it succeeds, or until the leases have run out (then recording is moot:
        the rows are claimed and sent again, which at-least-once allows)."""
        backoff = Backoff()
        deadline = max(o.delivery.lease_expires for o in outcomes)
        while True:
            try:
                recorded = store.record_outcomes(outcomes, dispatcher=self.id)
                break
            except (DatabaseError, InterfaceError) as exc:
                connection.close()
                if time.monotonic() > deadline:
                    logger.error(
                        "dispatcher %s: could not record %d outcomes before their leases expired (%s); "
                        "they will be sent again", self.id, len(outcomes), exc,
                    )
                    return
                wait = backoff.next()
                logger.warning("dispatcher %s: recording outcomes failed (%s); retrying in %.1fs", self.id, exc, wait)
                time.sleep(wait)
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
                self.id, len(outcomes) - recorded, len(outcomes),
            )


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__

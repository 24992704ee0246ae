"""One dispatcher process: claim due outbox rows, send them, record their outcomes.

Its parts, each on threads of its own:
- the claim loop (`run`, on the main thread) claims rows into the lane of their channel, and as
  a lane's threads come free STARTs a group of its rows (one statement: from here on a cancel
  is refused) and hands them to the lane's threads; the rows its threads can take at once are
  started by the claim itself (no START);
- a lane per channel (`Lane`): the rows claimed for it and not started, and send threads of
  its own, so that a channel whose provider hangs holds up no other channel;
- the send threads run `Channel.deliver`, which returns by the channel's deadline whatever the
  provider does, and hand each outcome to the recorder at once;
- the recorder (outbox.recorder) writes outcomes in batches; while it cannot, nothing is
  claimed;
- the listener (outbox.listen) wakes the claim loop when new work commits; without a
  notification the loop still looks every poll interval (scheduled retries, expired leases,
  missed notifications);
- the heartbeat (outbox.heartbeat) writes this process's row of the `dispatcher` table from
  `stats()`.

At-least-once: a row stays in the outbox until its outcome is recorded. If this process dies,
its leases expire and other dispatchers claim the rows again.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from django.db import DatabaseError, InterfaceError, connection
from django.db.backends.signals import connection_created

from channels.base import Channel
from channels.errors import PermanentChannelError, RecipientRefusedError, TransientChannelError

from . import metrics, store
from .backoff import Backoff
from .heartbeat import DispatcherStats, Heartbeat
from .listen import OutboxListener
from .recorder import OutcomeRecorder
from .retry import RetryPolicy
from .wakeup import Wakeup

logger = logging.getLogger("outbox.dispatcher")

# How long after its deadline an abandoned send may take to come back (Channel.deliver).
DEADLINE_SLACK = 0.5


def _without_jit(sender, connection, **kwargs) -> None:
    """No JIT compilation on a dispatcher's connections. With a large backlog the planner's
    estimate for CLAIM passes jit_above_cost, and compiling it took 104 ms of a 113 ms claim
    (PostgreSQL 15, 100,000 rows due on another channel); these statements touch a few hundred
    rows, which JIT never makes faster."""
    with connection.cursor() as cursor:
        cursor.execute("SET jit = off")


def new_dispatcher_id() -> str:
    """host:pid:random, unique per process lifetime; shown in leases and history."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


# A started send waits for a thread at most about this long on average: a lane whose sends
# are quick starts more rows at once (up to what the lease covers), one whose sends are slow
# two per thread, so that a notification shows 'sending' (and refuses a cancel) only shortly
# before its provider call.
QUICK_WAIT_SECONDS = 0.05


def lease_allows_send(*, lease_left: float, send_timeout: float, sends_before: int = 0) -> bool:
    """Whether a send may start with `lease_left` seconds of its lease to go.

    It must end inside the lease: otherwise another dispatcher could claim the row and send
    it too while this one is still sending. A send ends by its channel's deadline (plus the
    slack of abandoning it); one that first waits for a thread may wait for `sends_before`
    sends, each as long.
    """
    return lease_left >= (1 + sends_before) * (send_timeout + DEADLINE_SLACK)


class Lane:
    """One channel's share of a dispatcher: its claimed, unstarted rows and its send threads."""

    def __init__(self, channel: Channel, threads: int, *, batch_size: int, lease_seconds: float):
        self.channel = channel
        self.threads = threads
        self.batch_size = batch_size
        # What its threads can send in one lease if every send runs to its deadline. A channel
        # whose provider hangs so holds (claimed or in flight) only rows it can send, not rows
        # that would wait out their lease; for a fast channel the batch size is the bound.
        self.lease_bound = threads * max(1, int(lease_seconds // (channel.send_timeout + DEADLINE_SLACK)))
        self.ready: deque[store.Delivery] = deque()  # claimed, not started
        self.in_flight = 0  # started, not finished (changed under Dispatcher._in_flight_lock)
        self.held = False  # ready rows wait for a free thread (see Dispatcher._start_ready)
        self.mean_send_seconds: float | None = None  # moving average, from the lane's sends
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"send-{channel.name}")

    @property
    def max_started(self) -> int:
        """How many of its rows may be started at once (sending, or waiting for a thread): two per
        thread, so that a started send waits at most one send's time; for quick sends as many
        as wait QUICK_WAIT_SECONDS on average, within the sends its lease covers."""
        per_thread = 2
        if self.mean_send_seconds is not None:
            per_thread = max(2, 1 + int(QUICK_WAIT_SECONDS / max(self.mean_send_seconds, 1e-6)))
        return self.threads * min(per_thread, max(2, self.lease_bound // self.threads))

    def observe_send(self, seconds: float) -> None:
        """A send took `seconds` (an exponential moving average of the last ~20)."""
        mean = self.mean_send_seconds
        self.mean_send_seconds = seconds if mean is None else mean + 0.05 * (seconds - mean)

    def room(self) -> int:
        """How many rows to claim for it now: none while claimed rows wait to be started (the
        next claim starts rows itself, see startable), and none until half of what it may hold
        is free."""
        if self.ready or self.in_flight >= self.max_started:
            return 0
        free = self.lease_bound - self.in_flight
        return min(self.batch_size, free) if free >= min(self.batch_size, self.lease_bound) // 2 else 0

    def startable(self) -> int:
        """How many rows a claim for it may start in the same statement: as many as START would
        take now, each under a fresh lease long enough for the sends queued before it."""
        return max(0, min(self.max_started, self.lease_bound) - self.in_flight)


class Dispatcher:
    """Delivers outbox rows for `channels` until `stop()` is called (or SIGTERM/SIGINT).

    `threads` is per channel: each channel sends on threads of its own.
    """

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
        failover_after: int = 3,
        routes: dict[str, list[str]] | None = None,
    ):
        self.channels = channels
        self.threads = threads
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry_policy = retry_policy
        self.id = dispatcher_id or new_dispatcher_id()
        # After a NOTIFY, look once more when the intake's debounce window has passed: commits
        # inside the window skipped their own NOTIFY.
        self.recheck_delay = notify_debounce + 0.005
        self.lanes = {name: Lane(channel, threads, batch_size=batch_size, lease_seconds=lease_seconds)
                      for name, channel in channels.items()}
        # Rate budgets and circuit breakers, shared with the fleet through channel_state.
        self.policies = {name: channel.policy for name, channel in channels.items()}
        # Failover: after this many transient failures on its channel a row moves on.
        self.failover_after = failover_after
        # channel -> its fallbacks, of every configured channel (a row served here may come from
        # a channel served elsewhere); by default, those of `channels`.
        self.routes = routes if routes is not None else {
            name: list(policy.fallback) for name, policy in self.policies.items() if policy.fallback}
        self._failover_checked_at = 0.0
        self._pruned_at = 0.0
        # Receipts that came before their send was recorded wait for it: the channels served
        # here that take receipts, with their kinds (store.apply_pending_receipts).
        self.receipt_channels = {name: channel.kind for name, channel in channels.items() if channel.receipts_route()}
        self._receipts_checked_at = 0.0
        self.recorder = OutcomeRecorder(self.id, policies=self.policies)
        self._states_ready = False

        # stop() may run in a signal handler: it only sets a flag and the wake-up, which takes
        # no lock (outbox.wakeup); the claim loop passes the stop on to the other threads.
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._stop = threading.Event()  # for the listener: set once the claim loop has ended
        self._wake = Wakeup()
        self._in_flight_lock = threading.Lock()
        self._recheck_at: float | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; in-flight sends finish and are recorded, then run() returns.
        Safe in a signal handler, and from any thread."""
        self._stop_requested = True
        self._wake.set()

    def stats(self) -> DispatcherStats:
        recorder = self.recorder
        return DispatcherStats(in_flight=sum(lane.in_flight for lane in self.lanes.values()),
                               sent=recorder.sent, failed=recorder.failed, retried=recorder.retried,
                               problem=recorder.problem)

    def run(self) -> int:
        """The dispatcher's loop; returns the process exit code (0 after a graceful stop)."""
        logger.info(
            "dispatcher %s started: channels=%s threads=%d per channel batch=%d lease=%.0fs",
            self.id, ",".join(sorted(self.channels)), self.threads, self.batch_size, self.lease_seconds,
        )
        connection_created.connect(_without_jit, dispatch_uid="outbox.dispatcher.without_jit")
        if connection.connection is not None:  # opened before: it needs the setting too
            _without_jit(None, connection)
        heartbeat = Heartbeat(dispatcher_id=self.id, channels=sorted(self.channels), stats=self.stats)
        heartbeat.start()
        listener = OutboxListener(on_notify=self._notified, stop=self._stop)
        listener.start()
        self.recorder.start()
        try:
            self._claim_loop()
        finally:
            self._stop.set()  # the listener ends
            for lane in self.lanes.values():
                lane.pool.shutdown(wait=True)  # in-flight sends finish ...
            self.recorder.stop()  # ... and their outcomes are recorded
            heartbeat.stop()  # the last heartbeat: final counts and stopped_at
            connection.close()
        stats = self.stats()
        logger.info("dispatcher %s stopped: sent=%d retried=%d failed=%d", self.id, stats.sent, stats.retried, stats.failed)
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one exits at once (leases cover the rest)."""

        def handle(signum, frame):
            # Nothing that takes a lock (logging does): the claim loop logs the stop.
            if self._stop_requested:
                os._exit(1)
            self._stop_signal = signum
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored under a supervisor
            signal.signal(signal.SIGINT, handle)

    # --- claiming and starting ----------------------------------------------------------------

    def _claim_loop(self) -> None:
        """Keep the lanes fed: claim rows into them, START them as their threads come free.

        Claimed rows wait in their lane unstarted, so a cancel still wins over them; a START
        marks a group as being sent right before the lane's threads take it.
        """
        backoff = Backoff()
        may_claim = True
        while not self._stop_requested:
            worked = False
            try:
                for lane in self.lanes.values():
                    if lane.ready and lane.in_flight < lane.max_started:
                        worked |= self._start_ready(lane)
                if not self._states_ready:
                    store.ensure_channel_states(self.policies)
                    self._states_ready = True
                self._fail_over_open_channels()
                self._prune_recipient_budgets()
                self._apply_pending_receipts()
                # A dispatcher that cannot record outcomes claims nothing: what it sent could
                # not be recorded either (its heartbeat and metrics say so).
                if may_claim and not self.recorder.problem:
                    claimed, may_claim = self._claim()
                    worked |= claimed
            except (DatabaseError, InterfaceError) as exc:
                wait = backoff.next()
                logger.warning("dispatcher %s: database error (%s); retrying in %.1fs", self.id, exc, wait)
                connection.close()  # a fresh connection next time (the server may have restarted)
                self._sleep(wait)
                continue
            backoff.reset()
            if not worked:
                # Cleared after the wait, not before the work: a wake-up given while this pass
                # ran (the sends of its claim may all end before the pass does) is not lost,
                # and the pass after the clear sees what it was given for. (Cleared at the top
                # of each pass, such a wake-up was lost whenever the claim had come back short
                # of its limit, and a backlog waited for the poll interval.)
                self._wake.wait(self._idle_timeout())
                self._wake.clear()
                may_claim = True  # woken by new work, by free threads, or the poll interval
        if self._stop_signal is not None:
            logger.info("dispatcher %s: %s received, finishing in-flight sends", self.id,
                        signal.Signals(self._stop_signal).name)
        self._release_ready()

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            self._wake.wait(left)
            self._wake.clear()

    def _fail_over_open_channels(self) -> None:
        """Now and then (every poll interval), move the due rows of channels whose breaker is
        open to their fallbacks."""
        if not self.routes or time.monotonic() - self._failover_checked_at < self.poll_interval:
            return
        self._failover_checked_at = time.monotonic()
        moved = store.failover_from_open(channels=sorted(self.routes), routes=self.routes, dispatcher=self.id)
        if moved:
            logger.warning("dispatcher %s: %d notifications failed over from channels whose circuit breaker is open",
                           self.id, moved)

    def _prune_recipient_budgets(self) -> None:
        """Every minute, forget recipient budgets that are full again."""
        if time.monotonic() - self._pruned_at < 60:
            return
        self._pruned_at = time.monotonic()
        store.prune_recipient_budgets(self.policies)

    def _apply_pending_receipts(self) -> None:
        """Every poll interval, apply the receipts that were waiting for a send recorded since."""
        if not self.receipt_channels or time.monotonic() - self._receipts_checked_at < self.poll_interval:
            return
        self._receipts_checked_at = time.monotonic()
        applied = store.apply_pending_receipts(channel_kinds=self.receipt_channels)
        if applied:
            logger.info("dispatcher %s: %d receipts applied that had come before their send was recorded", self.id, applied)

    def next_hop(self, delivery: store.Delivery) -> str | None:
        """The channel a row fails over to from its current one: the next of its origin's
        fallback list, or None at its end."""
        route = self.routes.get(delivery.origin or delivery.channel, [])
        if delivery.channel not in route:
            return route[0] if route else None
        position = route.index(delivery.channel) + 1
        return route[position] if position < len(route) else None

    def _claim(self) -> tuple[bool, bool]:
        """Claim rows for the lanes that can take more: (whether any came, whether more may be due)."""
        rooms = {name: lane.room() for name, lane in self.lanes.items()}
        rooms = {name: room for name, room in rooms.items() if room > 0}
        if not rooms:
            return False, True  # none can take more now; claim again as soon as one can
        limit = min(self.batch_size, sum(rooms.values()))
        start = {name: self.lanes[name].startable() for name in rooms}
        claimed = store.claim(dispatcher=self.id, limit=limit, lease_seconds=self.lease_seconds,
                              channels=rooms, max_attempts=self.retry_policy.max_attempts, policies=self.policies,
                              start={name: n for name, n in start.items() if n > 0})
        for delivery in claimed:
            lane = self.lanes[delivery.channel]
            if delivery.started:
                self._hand_over(lane, delivery)
            else:
                lane.ready.append(delivery)
            if delivery.probe:
                logger.warning("channel %s: circuit breaker open -> half_open: notification=%s is the probe",
                               delivery.channel, delivery.notification_id)
                metrics.count_breaker_transition(delivery.channel, "half_open")
        return bool(claimed), len(claimed) == limit  # a full batch: more may be due

    def _start_ready(self, lane: Lane) -> bool:
        """START as many of the lane's ready rows as its threads can take soon, and hand them over."""
        room = lane.max_started - lane.in_flight
        send_timeout = lane.channel.send_timeout
        group, held, too_late = [], [], []
        for _ in range(min(room, len(lane.ready))):
            delivery = lane.ready.popleft()
            lease_left = delivery.lease_expires - time.monotonic()
            if not lease_allows_send(lease_left=lease_left, send_timeout=send_timeout):
                too_late.append(delivery)
                continue
            # Beyond the free threads, a started send waits for a thread, for the sends queued
            # before it, before it runs: its lease must cover the wait too. If it cannot, it
            # stays here, unstarted, until a thread is free.
            sends_before = (lane.in_flight + len(group)) // lane.threads
            if sends_before and not lease_allows_send(lease_left=lease_left, send_timeout=send_timeout,
                                                      sends_before=sends_before):
                held.append(delivery)
                continue
            group.append(delivery)
        lane.ready.extendleft(reversed(held))
        lane.held = bool(held)
        if too_late:  # given back at once, rather than left leased until the lease ends
            logger.warning("dispatcher %s: %d rows of channel %s claimed too close to their lease's end to send; "
                           "released for the next claim", self.id, len(too_late), lane.channel.name)
            store.release(too_late)
        if not group:
            return bool(too_late)
        try:
            startable = store.start(group, dispatcher=self.id)
        except BaseException:
            lane.ready.extendleft(reversed(group))  # not started: try again
            raise
        for delivery in group:
            if delivery.outbox_id not in startable:
                logger.info("notification=%s not sent: cancelled, expired or lease lost before the send",
                            delivery.notification_id)
                continue
            self._hand_over(lane, delivery)
        return True

    def _hand_over(self, lane: Lane, delivery: store.Delivery) -> None:
        """A started row to the lane's send threads."""
        with self._in_flight_lock:
            lane.in_flight += 1
        lane.pool.submit(self._send, lane, delivery)

    def _release_ready(self) -> None:
        unstarted = [delivery for lane in self.lanes.values() for delivery in lane.ready]
        if not unstarted:
            return
        try:
            store.release(unstarted)
        except (DatabaseError, InterfaceError) as exc:  # their leases will expire instead
            logger.warning("dispatcher %s: could not release %d unstarted rows (%s)", self.id, len(unstarted), exc)
        for lane in self.lanes.values():
            lane.ready.clear()

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

    # --- sending (on a lane's threads) ---------------------------------------------------------

    def _send(self, lane: Lane, delivery: store.Delivery) -> None:
        try:
            outcome = self._attempt(lane.channel, delivery)
            self.recorder.put(outcome)
            lane.observe_send(outcome.duration)
        finally:
            with self._in_flight_lock:
                lane.in_flight -= 1
                # Wake the claim loop when half the lane's started capacity comes free, or
                # the lane's last send ends (a claim may have started fewer than half):
                # STARTs and claims then come in groups, not one per finished send.
                half = lane.max_started // 2
                half_free = lane.in_flight == 0 or lane.in_flight <= half < lane.in_flight + 1
                # Rows held for a free thread are started as soon as there is one.
                wake = half_free or (lane.held and lane.in_flight < lane.threads)
            if wake:
                self._wake.set()

    def _attempt(self, channel: Channel, delivery: store.Delivery) -> store.Outcome:
        """Send one row; its outcome. Raises nothing: whatever happens becomes an outcome."""
        started, started_at = time.monotonic(), time.time()
        try:
            if not lease_allows_send(lease_left=delivery.lease_expires - started, send_timeout=channel.send_timeout):
                # START or the wait for a thread took longer than the lease allowed for: sent
                # now, it could outlast the lease while another dispatcher sends it too. Not
                # sent; the row is released at once (its attempt is counted, with this error).
                return store.Outcome(delivery, "retrying", error="not sent: the lease would have run out during the send",
                                     ended_at=started_at)
            provider_id = channel.deliver(delivery.message)
            status, error, retry_after, refused = "sent", "", None, False
        except PermanentChannelError as exc:
            status, error, retry_after, refused = "failed", str(exc), None, isinstance(exc, RecipientRefusedError)
        except TransientChannelError as exc:
            status, error, retry_after, refused = "retrying", str(exc), exc.retry_after, False
        except Exception as exc:  # noqa: BLE001 - deliver raises nothing else; if it did, try again
            status, error, retry_after, refused = "retrying", f"dispatcher error around the send: {type(exc).__name__}", None, False
        duration = time.monotonic() - started
        timing = {"duration": duration, "ended_at": started_at + duration}
        if status == "sent":
            return store.Outcome(delivery, "sent", provider_message_id=provider_id, **timing)
        if status == "failed":
            return store.Outcome(delivery, "failed", error=error, suppress_reason=error if refused else "",
                                 kind=channel.kind, **timing)
        transient = {"provider_down": True, "retry_after": retry_after, **timing}
        delay = self.retry_policy.delay(delivery.attempt, retry_after)
        if delay is not None:
            move_to = self.next_hop(delivery) if delivery.attempt - delivery.moved_at_attempt >= self.failover_after else None
            if move_to is not None:  # to the fallback, due at once
                return store.Outcome(delivery, "retrying", error=error, move_to=move_to, **transient)
            return store.Outcome(delivery, "retrying", error=error, retry_delay=delay, **transient)
        return store.Outcome(delivery, "failed", error=f"gave up after {delivery.attempt} attempts: {error}", **transient)

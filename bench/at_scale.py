"""The service at a deployment's scale: a long history, a backlog on another channel, 1,000/s offered.

Three phases of `python -m bench`, each measured with the real processes on the run's database:

- history (dispatch_at_1m_history_ratio, ingest_at_1m_history_ratio): the no-op drain of
  dispatch_noop and the single POSTs of ingest_single, with 1,000,000 finished notifications
  (bench/history.py) in the tables, each divided by the same measurement on empty tables. The
  legs alternate empty, history, history, empty (A-B-B-A: a machine that slows down or speeds
  up during the phase weighs on both sides alike), and each side's rate is the mean of its legs.
  Only one fill: the tables are emptied (TRUNCATE) for the last leg.
- claim_backlog (claim_ms_at_100k_backlog_other_channel): the time of outbox.store.claim
  for a channel with a few due rows while another channel has 100,000 due, as an idle
  dispatcher of the first channel alone issues it; between claims, untimed, the claimed rows
  are replaced by as many new ones, so every claim sees the same state.
- latency_1000 (latency_p99_ms_at_1000_per_s): bench/latency.py's commit-to-send-call latency,
  with 1,000 notifications a second offered open loop (bench/openloop.py) instead of 50, as
  100 batch POSTs of 10 a second (LATENCY_1000_PER_REQUEST).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from . import dispatch, history, ingest, openloop
from .config import AT_SCALE, DISPATCH_PROCESSES, DISPATCH_THREADS, WRK_CONNECTIONS
from .latency import _wait_listening, _wait_sends
from .servers import free_port, start_dispatchers, start_gunicorn

# The drain of dispatch_noop, to the same channel.
DRAIN_ARGS = ["--processes", str(DISPATCH_PROCESSES), "--threads", str(DISPATCH_THREADS), "--batch-size", "100"]


def _client_id(run: Any) -> int:
    """The bench client's id: the history is its own, as the API key's notifications are."""
    with run.server.connect(run.dbname) as conn:
        return conn.execute("SELECT id FROM api_client WHERE name = %s", (dispatch.BENCH_CLIENT,)).fetchone()[0]


def history_phase(run: Any) -> None:
    """dispatch_at_1m_history_ratio and ingest_at_1m_history_ratio (see the module docstring).

    `run` is bench.__main__.Run: its database, processes' environment, sizes and figures.
    Needs Django set up on the run's database (dispatch.setup_django), as run.drain does."""
    sizes = AT_SCALE[run.sizes.name]
    legs = ["empty", "history", "history", "empty"] if sizes.alternate else ["empty", "history"]
    run.say(f"history: {' '.join(legs)} legs, each a {run.sizes.drain_rows:,}-row no-op drain and "
            f"{sizes.ingest_leg_seconds}s of single POSTs; {sizes.history_rows:,} finished notifications in the "
            f"history legs")
    client_id = _client_id(run)
    port = free_port()
    api = start_gunicorn(run.env, run.dir, port=port)
    drains: dict[str, list[float]] = {"empty": [], "history": []}
    posts: dict[str, list[float]] = {"empty": [], "history": []}
    leg_details: list[dict[str, Any]] = []
    try:
        # Untimed: each gunicorn worker loads its views and connects at its first requests
        # (2 s at least: the first leg would otherwise pay for what the others do not).
        ingest.warm_up(port=port, api_key=run.api_key, seconds=max(2, run.sizes.wrk_warmup_seconds),
                       connections=WRK_CONNECTIONS, log_dir=run.dir, use_wrk=run.use_wrk)
        state = None
        for number, leg in enumerate(legs, 1):
            if leg != state:  # only where the legs change side: one fill for the whole phase
                if leg == "empty":
                    history.empty(run.server, run.dbname)
                else:
                    started = time.monotonic()
                    fill = history.fill(run.server, run.dbname, rows=sizes.history_rows, client_id=client_id)
                    run.say(f"  history of {sizes.history_rows:,} notifications written in "
                            f"{time.monotonic() - started:.1f}s ({', '.join(f'{k} {v:.1f}' for k, v in fill.items())})")
                    run.details["history_fill_seconds"] = fill
                state = leg
            rows = history.counts(run.server, run.dbname)
            drained = run.drain(f"history_{number}_{leg}", DRAIN_ARGS, run.sizes.drain_rows, "fake")
            result = ingest.single(port=port, api_key=run.api_key, seconds=sizes.ingest_leg_seconds,
                                   connections=WRK_CONNECTIONS, log_dir=run.dir, use_wrk=run.use_wrk,
                                   log_name=f"wrk-history-{number}-{leg}")
            run.say(f"  leg {number} ({leg}, {rows['notification']:,} notifications before it): drain "
                    f"{drained.per_s:,.0f}/s, single POSTs {result.per_s:,.0f}/s")
            drains[leg].append(drained.per_s)
            posts[leg].append(result.per_s)
            leg_details.append({"leg": leg, "rows_before": rows, "drain_per_s": drained.per_s,
                                "ingest_per_s": result.per_s, "ingest_p99_ms": result.p99_ms,
                                "ingest_requests": result.requests, "ingest_errors": result.errors})
    finally:
        api.stop()
    # Leave the tables as the phases before found them (empty), not 3,000,000 rows heavier.
    history.empty(run.server, run.dbname)
    mean = statistics.fmean
    run.figures["dispatch_at_1m_history_ratio"] = mean(drains["history"]) / mean(drains["empty"])
    run.figures["ingest_at_1m_history_ratio"] = mean(posts["history"]) / mean(posts["empty"])
    run.details.update(history_rows=sizes.history_rows, history_legs=leg_details,
                       history_drain_per_s={k: mean(v) for k, v in drains.items()},
                       history_ingest_per_s={k: mean(v) for k, v in posts.items()})
    if sizes.history_rows != 1_000_000:
        run.notes.append(f"dispatch_at_1m_history_ratio and ingest_at_1m_history_ratio: {sizes.history_rows:,} "
                         f"history rows in this {run.sizes.name} run, not 1,000,000 (the figures' names say the full size)")


# The claim: a channel with a few due rows, beside a channel with a backlog (both `fake`
# channels of the run's channels file; nothing is sent here).
CLAIMED_CHANNEL = "fake-100ms"
BACKLOG_CHANNEL = "fake"
CLAIMED_ROWS = 5
CLAIM_LIMIT = 100  # the dispatcher's batch size (run_dispatchers' default)


def claim_phase(run: Any) -> None:
    """claim_ms_at_100k_backlog_other_channel: the median of many claims (see the module
    docstring), and in the details the same claims before the backlog was queued, their p99,
    and EXPLAIN (ANALYZE, BUFFERS) of one claim of each: what it read.

    Needs Django set up on the run's database (dispatch.setup_django)."""
    from django.db import connection

    sizes = AT_SCALE[run.sizes.name]
    run.say(f"claim: {sizes.claims} claims of {CLAIMED_ROWS} due {CLAIMED_CHANNEL} rows, without and with "
            f"{sizes.claim_backlog_rows:,} due {BACKLOG_CHANNEL} rows")
    dispatch.reset_outbox(run.server, run.dbname)
    dispatch.enqueue_bulk(CLAIMED_ROWS, channel=CLAIMED_CHANNEL)
    dispatch.vacuum(run.server, run.dbname)
    without = _time_claims(run, sizes.claims)
    plans_without = _prepared_plans(connection)
    explain_without = _explain_claim(connection)
    started = time.monotonic()
    dispatch.enqueue_bulk(sizes.claim_backlog_rows, channel=BACKLOG_CHANNEL)
    dispatch.vacuum(run.server, run.dbname)
    run.say(f"  {sizes.claim_backlog_rows:,} queued for {BACKLOG_CHANNEL} in {time.monotonic() - started:.1f}s")
    with_backlog = _time_claims(run, sizes.claims)
    plans_with = _prepared_plans(connection)
    explain_with = _explain_claim(connection)
    dispatch.reset_outbox(run.server, run.dbname)
    connection.close()
    median = statistics.median
    run.figures["claim_ms_at_100k_backlog_other_channel"] = median(with_backlog)
    run.details.update(
        claim_backlog_rows=sizes.claim_backlog_rows, claim_claims=sizes.claims,
        claim_ms_at_backlog={"p50": median(with_backlog), "p99": ingest.percentile(with_backlog, 99),
                             "mean": statistics.fmean(with_backlog)},
        claim_ms_without_backlog={"p50": median(without), "p99": ingest.percentile(without, 99),
                                  "mean": statistics.fmean(without)},
        claim_backlog_vs_without=median(with_backlog) / median(without),
        claim_explain={"without_backlog": explain_without, "with_backlog": explain_with},
        claim_prepared_plans={"without_backlog": plans_without, "with_backlog": plans_with})
    run.say(f"  claim p50 {median(without):.2f} ms without the backlog, {median(with_backlog):.2f} ms with it")
    if sizes.claim_backlog_rows != 100_000:
        run.notes.append(f"claim_ms_at_100k_backlog_other_channel: a backlog of {sizes.claim_backlog_rows:,} rows in "
                         f"this {run.sizes.name} run, not 100,000")


def _claim() -> list[Any]:
    """One claim of CLAIMED_CHANNEL as an idle dispatcher of that channel alone issues it: a
    batch's room, and its rows started in the same statement (an idle lane starts what it
    claims, up to twice its threads: Lane.startable)."""
    from outbox import store

    return store.claim(dispatcher="bench-claim", limit=CLAIM_LIMIT, lease_seconds=60,
                       channels={CLAIMED_CHANNEL: CLAIM_LIMIT}, start={CLAIMED_CHANNEL: 2 * DISPATCH_THREADS})


def _time_claims(run: Any, count: int) -> list[float]:
    """Milliseconds of each of `count` claims (_claim: the statement's round trip and its rows
    turned into deliveries), committed as a dispatcher's are. Between two claims, untimed, the
    claimed rows (started: a dispatcher would send them now) are deleted from the outbox and as
    many new ones queued through outbox.store.enqueue, so that every claim finds the same due
    rows. Not a rollback: psycopg forgets its prepared statements at every ROLLBACK, and a
    dispatcher's claims are prepared ones. Every 50 claims the outbox is vacuumed, untimed
    too, as autovacuum would: the claims would otherwise read more dead row versions each time."""
    from django.db import connection

    from notifications.ids import new_notification_id
    from outbox import store

    client_id = _client_id(run)
    timings = []
    for i in range(count + 5):
        started = time.perf_counter()
        claimed = _claim()
        elapsed = (time.perf_counter() - started) * 1000
        if len(claimed) != CLAIMED_ROWS:
            raise RuntimeError(f"a claim of {CLAIMED_CHANNEL} returned {len(claimed)} rows, not {CLAIMED_ROWS}")
        if i >= 5:  # untimed: the connection, and the statement's first executions (psycopg prepares it at the 5th)
            timings.append(elapsed)
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM outbox WHERE id = ANY(%s)", [[d.outbox_id for d in claimed]])
        store.enqueue([store.NewNotification(id=new_notification_id(), channel=CLAIMED_CHANNEL,
                                             recipient=f"claim{n}@example.com", message="claim")
                       for n in range(CLAIMED_ROWS)], client_id=client_id)
        if i % 50 == 49:
            with run.server.connect(run.dbname) as conn:
                conn.execute("VACUUM outbox")
    return timings


def _prepared_plans(connection: Any) -> dict[str, int] | None:
    """How the server planned the claims of this connection: psycopg prepares a statement at
    its 5th execution, and the server then plans each execution anew (custom plans) unless a
    generic plan looks as cheap. The CLAIM is found by its text up to its first parameter
    (psycopg sends $1, $2... where outbox/sql.py has %(name)s)."""
    from outbox import sql

    prefix = sql.CLAIM.split("%(", 1)[0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                       "WHERE left(statement, length(%s)) = %s", [prefix, prefix])
        row = cursor.fetchone()
    return None if row is None else {"generic_plans": row[0], "custom_plans": row[1]}


def _explain_claim(connection: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one claim, exactly as store.claim sends it (its statement
    and parameters caught on the way out), in a transaction rolled back: the execution time
    and the buffers read, and the plan's text in full."""
    from django.db import transaction

    caught: list[tuple[str, Any]] = []

    def catch(execute, sql, params, many, context):
        caught.append((sql, params))
        return execute(sql, params, many, context)

    with transaction.atomic():
        with connection.execute_wrapper(catch):
            _claim()
        transaction.set_rollback(True)
    statement, params = caught[-1]  # the CLAIM itself (a LOCK_CHANNEL_STATES may precede it)
    # Each in a transaction of its own: within one, the second would find the rows the first leased.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params)
        plan = cursor.fetchone()[0]
        transaction.set_rollback(True)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
        text = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]["Plan"]
    return {"execution_ms": plan[0]["Execution Time"],
            "shared_hit_blocks": top.get("Shared Hit Blocks"), "shared_read_blocks": top.get("Shared Read Blocks"),
            "plan": text}


# Notifications per request in latency_1000: 1,000 single POSTs a second would need more CPU
# than this 2-core machine has beside the dispatchers, the database and the generator (they
# took 385/s there); batches of 10 offer the same arrivals, ten at a time, which is no easier
# for the dispatchers' latency.
LATENCY_1000_PER_REQUEST = 10


def latency_1000_phase(run: Any) -> None:
    """latency_p99_ms_at_1000_per_s and its p50: commit to send call, as bench/latency.py
    measures it, with 1,000 notifications a second offered to the latency channel, in batch
    POSTs of LATENCY_1000_PER_REQUEST (open loop:
    each request leaves at its time whatever the earlier answers took, up to
    openloop.MAX_IN_FLIGHT at once). The details say what rate was really offered and
    accepted, and whether the generator kept to its schedule."""
    sizes = AT_SCALE[run.sizes.name]
    rate = sizes.latency_rate_per_s
    run.say(f"latency at {rate:,}/s offered for {sizes.latency_seconds}s, {DISPATCH_PROCESSES} dispatchers")
    port = free_port()
    api = start_gunicorn(run.env, run.dir, port=port)
    try:
        ingest.warm_up(port=port, api_key=run.api_key, seconds=max(1, run.sizes.wrk_warmup_seconds),
                       connections=WRK_CONNECTIONS, log_dir=run.dir, use_wrk=run.use_wrk)
        # The warm-up's rows (queued for `fake`, which nothing serves here) are not this
        # measurement's; as in the latency phase, the outbox starts empty.
        dispatch.reset_outbox(run.server, run.dbname)
        log_path = run.latency_log  # the latency phase, if it ran, is over: its sends are not these
        log_path.write_text("")
        process = start_dispatchers(run.env, run.dir, "--processes", str(DISPATCH_PROCESSES), "--channels", "latency",
                                    name="dispatchers-latency-1000")
        try:
            _wait_listening(run.server, run.dbname, DISPATCH_PROCESSES, process)
            time.sleep(1.5)  # their first claims and polls are over
            # Untimed: a second at the same rate, so that what is measured is the steady state,
            # not the first requests of each API thread (its database connection) and the
            # dispatchers' first statements (prepared after five runs), which took 20-140 ms.
            warm = openloop.offer(port=port, api_key=run.api_key, rate=rate, seconds=1,
                                  channel="latency", per_request=LATENCY_1000_PER_REQUEST)
            _wait_sends(log_path, len(warm.accepted), timeout=60)
            log_path.write_text("")  # (the channel appends: its next lines start the file again)
            offered = openloop.offer(port=port, api_key=run.api_key, rate=rate, seconds=sizes.latency_seconds,
                                     channel="latency", per_request=LATENCY_1000_PER_REQUEST)
            sent = _wait_sends(log_path, len(offered.accepted), timeout=60 + len(offered.accepted) / 200)
        finally:
            process.stop()
    finally:
        api.stop()
    # As bench/latency.py: from the commit, or where the server does not record commit times
    # (a DATABASE_URL server without track_commit_timestamp) from the transaction's start.
    query = ("SELECT notification_id::text, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 "
             "FROM notification_event WHERE status = 'queued' AND notification_id = ANY(%s::uuid[])"
             if run.commit_timestamps else
             "SELECT id::text, extract(epoch FROM created_at)::float8 FROM notification WHERE id = ANY(%s::uuid[])")
    with run.server.connect(run.dbname) as conn:
        committed = dict(conn.execute(query, (list(offered.accepted),)).fetchall())
    latencies = [(sent[nid] - committed[nid]) * 1000 for nid in offered.accepted]
    dispatch.reset_outbox(run.server, run.dbname)
    run.figures["latency_p99_ms_at_1000_per_s"] = ingest.percentile(latencies, 99)
    run.details.update(
        latency_1000_p50_ms=ingest.percentile(latencies, 50), latency_1000_max_ms=max(latencies),
        latency_1000_samples=len(latencies), latency_1000_target_per_s=rate,
        latency_1000_origin="commit" if run.commit_timestamps else "created_at", **offered.details("latency_1000"))
    run.say(f"  offered {offered.offered_per_s:,.0f}/s, accepted {offered.accepted_per_s:,.0f}/s; commit to send "
            f"p50 {ingest.percentile(latencies, 50):.1f} ms, p99 {ingest.percentile(latencies, 99):.1f} ms")
    if not offered.kept_up(rate):
        run.notes.append(f"latency_p99_ms_at_1000_per_s: the generator offered {offered.offered_per_s:,.0f}/s of the "
                         f"{rate:,}/s asked (requests left up to {offered.late_p99_ms:,.0f} ms late, p99: at most "
                         f"{openloop.MAX_IN_FLIGHT} in flight while the API answered {offered.accepted_per_s:,.0f}/s); "
                         f"the latency is that of the load the API took")

"""outbox.wakeup.Wakeup: an Event that signal handlers may set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from outbox.wakeup import Wakeup

ROOT = Path(__file__).resolve().parents[3]


def test_it_behaves_as_an_event():
    wakeup = Wakeup()
    assert not wakeup.is_set()
    started = time.monotonic()
    assert wakeup.wait(0.05) is False
    assert time.monotonic() - started >= 0.04
    for _ in range(3):
        wakeup.set()  # several sets are one
    assert wakeup.is_set() and wakeup.wait(5) is True
    wakeup.clear()
    assert not wakeup.is_set()
    threading.Timer(0.05, wakeup.set).start()
    started = time.monotonic()
    assert wakeup.wait(5) is True
    assert time.monotonic() - started < 2


def test_a_full_buffer_of_unread_sets_is_still_set():
    wakeup = Wakeup()
    for _ in range(1_000_000):  # far more than a socket buffer holds
        wakeup.set()
    assert wakeup.is_set()
    wakeup.clear()
    assert not wakeup.is_set()


# A process whose main thread waits, clears and sets in a loop, as the dispatcher's claim loop
# and the supervisor's do, while a handler sets the same wake-up for every SIGUSR1. With a
# threading.Event a handler that lands while the main thread holds the Event's lock waits for
# it forever (or, as signals pile up, nests until RecursionError).
CHILD = """
import signal, sys, time
from outbox.wakeup import Wakeup
wakeup, handled = Wakeup(), 0
def handle(signum, frame):
    global handled
    handled += 1
    wakeup.set()
signal.signal(signal.SIGUSR1, handle)
print("ready", flush=True)
end = time.monotonic() + 1.5
while time.monotonic() < end:
    wakeup.wait(0.001); wakeup.clear(); wakeup.set(); wakeup.clear()
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
print(handled, flush=True)
"""


def test_signal_handlers_that_set_it_in_a_burst_never_hang_the_thread_they_interrupt():
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        sent, deadline = 0, time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            try:
                os.kill(child.pid, signal.SIGUSR1)
            except ProcessLookupError:
                break
            sent += 1
            if sent % 20 == 0:
                time.sleep(0.0005)  # bursts of 20, about as fast as the loop turns
        out, err = child.communicate(timeout=5)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err[-2000:]
    assert int(out.strip()) > 1000  # many landed while the loop ran

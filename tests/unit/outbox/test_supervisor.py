"""The supervisor of dispatcher processes (outbox/supervisor.py), on its own: no children."""

from __future__ import annotations

import os
import signal
import threading

from outbox.supervisor import Supervisor

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def test_the_supervisor_stops_on_sigterm_and_gives_back_the_signal_handlers_it_replaced():
    def ours(signum, frame):  # what the embedding program had before
        pass

    before = {signum: signal.signal(signum, ours) for signum in SIGNALS}
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert Supervisor(processes=0, target=lambda: 0).run() == 0
        assert {signum: signal.getsignal(signum) for signum in SIGNALS} == dict.fromkeys(SIGNALS, ours)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)

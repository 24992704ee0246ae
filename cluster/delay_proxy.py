"""A TCP proxy that delays each direction: added round-trip latency without netem.

`python -m cluster.delay_proxy --listen 10.213.0.2:5433 --target 127.0.0.1:5432 --delay-ms 10`
forwards every connection to the target and holds each chunk of bytes `delay` before passing
it on, in each direction: 10 ms each way is 20 ms of added round trip. Chunks keep their order
and are timed from their arrival, so a pipelined stream keeps its throughput (the delay is a
latency, not a rate limit), as on a long link. An end of stream is passed on once the bytes
before it are; an error on either side closes both.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    arrived = asyncio.Event()

    async def read() -> None:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:  # reset: passed on as an end of stream, which ends the other side too
                data = b""
            queue.append((loop.time() + delay, data))
            arrived.set()
            if not data:
                return

    async def write() -> None:
        while True:
            while not queue:
                arrived.clear()
                await arrived.wait()
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


async def _serve_connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                            target: tuple[str, int], delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.wait_for(asyncio.open_connection(*target), timeout=10)
    except (OSError, asyncio.TimeoutError):
        client_writer.close()
        return
    directions = [asyncio.create_task(_pipe(client_reader, server_writer, delay)),
                  asyncio.create_task(_pipe(server_reader, client_writer, delay))]
    try:
        # Both directions end normally at their EOF; an error in one ends the connection.
        done, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        for task in done:
            task.exception()  # retrieved: a reset connection is no error of the proxy's
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_connection(r, w, target, delay), *listen,
                                        reuse_address=True)
    print(f"delay proxy: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}, {delay * 1000:.1f} ms each way",
          flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.delay_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--target", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True, help="added latency in each direction")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())

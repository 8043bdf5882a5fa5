"""idle-5k client: open N keep-alive connections, one GET each, then hold them open.

    python3 idle_client.py PORT CONNECTIONS [PATH]

Prints one JSON line {"open": n, "ok": n, "errors": n} once every connection has its
response (or failed), then holds the connections until stdin gets a line or closes,
and exits. At most `BATCH` connections are being opened at once, so no proxy sees a
burst beyond its default upstream limits (Envoy: 1024 pending requests). Everything
is bounded: a connection gets `TIMEOUT` seconds for its response.
"""

import asyncio
import json
import sys

BATCH = 256
TIMEOUT = 30.0


async def open_one(port, path, gate, held):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            return False
        held.append(writer)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
            return 200 <= status < 300
        except (OSError, ValueError, IndexError, asyncio.TimeoutError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False


async def main(port, connections, path):
    gate = asyncio.Semaphore(BATCH)
    held = []
    results = await asyncio.gather(
        *(open_one(port, path, gate, held) for _ in range(connections)))
    ok = sum(results)
    print(json.dumps({"open": len(held), "ok": ok, "errors": connections - ok}),
          flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for writer in held:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]),
                     sys.argv[3] if len(sys.argv) > 3 else "/"))

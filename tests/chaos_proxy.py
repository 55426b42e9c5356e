"""A real HTTP proxy in front of a real server that injects faults on chosen requests: a 503
with Retry-After, or a connection dropped without an answer. Every answer closes its
connection, so each request is decided on its own."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable

import httpx

Fault = str | None  # "503", "drop" or None (pass through)


class ChaosProxy:
    def __init__(self, backend: str, rule: Callable[[str, str, int], Fault]) -> None:
        self.backend = backend.rstrip("/")
        self.rule = rule
        self.seen: Counter[tuple[str, str]] = Counter()
        self.faults: list[tuple[str, str, str]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
            body = await reader.readexactly(length) if length else b""
            path = target.split("?", 1)[0]
            kind = path.rsplit("/", 1)[-1]
            self.seen[(method, kind)] += 1
            fault = self.rule(method, kind, self.seen[(method, kind)])
            if fault is not None:
                self.faults.append((method, path, fault))
            if fault == "drop":
                return  # close without a word
            if fault == "503":
                payload = b'{"detail": "injected fault"}'
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
                await writer.drain()
                return
            forward = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            async with httpx.AsyncClient(timeout=120) as client:
                answer = await client.request(
                    method, self.backend + target, headers=forward, content=body
                )
            out = [f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}"]
            for key, value in answer.headers.items():
                if key.lower() not in (
                    "content-length",
                    "connection",
                    "transfer-encoding",
                    "content-encoding",
                ):
                    out.append(f"{key}: {value}")
            out += [f"Content-Length: {len(answer.content)}", "Connection: close", "", ""]
            writer.write("\r\n".join(out).encode("latin-1") + answer.content)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

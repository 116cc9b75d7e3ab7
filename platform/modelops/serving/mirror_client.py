"""The mirror's HTTP client: one keep-alive HTTP/1.1 connection per mirror worker, POST only.

Why not a client library: each copy runs on the stable predictor's event loop, beside the client
requests it must not slow. Measured per copy (the stable's CPU, encode + decode + compare
included, c=4 to a local predictor): httpx ~2.1 ms, aiohttp ~0.45-0.55 ms, this ~0.2-0.28 ms.

What it does: `POST path` with Host, Content-Length and the given headers; reads the status
line, the headers and the body by Content-Length, chunked transfer coding, or (neither) up to
the connection's end. `Connection: close` or a body read to EOF closes the connection; a kept
connection that the server closed while idle (uvicorn closes idle connections after a few
seconds) is noticed before reuse, and a request that fails on a reused connection before any byte
of the answer arrived is retried once on a new one. Anything else raises (OSError,
asyncio.IncompleteReadError, ValueError): the caller counts a failed copy. Timeouts are the
caller's (`asyncio.timeout` around `post`).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_ANSWER_BYTES = 64 * 1024 * 1024


class BadAnswer(ValueError):
    """The server's bytes are not an HTTP/1.1 answer we can read."""


class Http1Client:
    def __init__(self, url: str):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.https else 80)
        netloc = u.netloc.rpartition("@")[2]
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._head = f"POST {self.path} HTTP/1.1\r\nHost: {netloc}\r\n"
        self._ssl = ssl.create_default_context() if self.https else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body)."""
        reused = self._writer is not None and not self._reader.at_eof() and not self._writer.is_closing()
        if not reused:
            self.close()
        for attempt in (0, 1):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, server_hostname=self.host if self.https else None)
            try:
                return await self._exchange(body, headers)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if attempt or not (reused and nothing_read):
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._writer.write(f"{self._head}{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        reader = self._reader
        while True:
            status, answer_headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status >= 200:
                break  # 1xx (100 Continue): another head follows
        keep = answer_headers.get("connection", "").lower() != "close"
        if "chunked" in answer_headers.get("transfer-encoding", "").lower():
            content = await _read_chunked(reader)
        elif "content-length" in answer_headers:
            try:
                length = int(answer_headers["content-length"])
            except ValueError:
                raise BadAnswer(f"Content-Length {answer_headers['content-length']!r}") from None
            if not 0 <= length <= MAX_ANSWER_BYTES:
                raise BadAnswer(f"Content-Length {length} out of range")
            content = await reader.readexactly(length)
        else:
            content, keep = await reader.read(MAX_ANSWER_BYTES), False
        if not keep:
            self.close()
        return status, answer_headers, content


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadAnswer(f"status line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadAnswer(f"header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks, size = [], 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            n = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadAnswer(f"chunk size line {line[:40]!r}") from None
        if n == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        size += n
        if size > MAX_ANSWER_BYTES:
            raise BadAnswer("chunked answer too large")
        chunks.append(await reader.readexactly(n))
        if await reader.readexactly(2) != b"\r\n":
            raise BadAnswer("chunk not followed by CRLF")

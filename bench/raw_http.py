"""A deliberately thin HTTP/1.1 client for load generation.

httpx spends about 1 ms of CPU per request in Python; on a 2-core machine the load
generator then competes with the services it measures (seen: the client at 93% CPU, the
router at 7%). This one writes pre-encoded requests on keep-alive connections and reads
just enough of each response to find its end.
"""

from __future__ import annotations

import asyncio
import json


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post_json(self, path: str, body: dict) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            # The benchmark measures the backends, never the router's response cache.
            "Cache-Control: no-cache\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self._writer.write(head + payload)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if not chunked:
            return status, await self._reader.readexactly(length)
        body_parts = []
        while (size := int((await self._reader.readline()).strip(), 16)) != 0:
            body_parts.append(await self._reader.readexactly(size))
            await self._reader.readline()
        await self._reader.readline()
        return status, b"".join(body_parts)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()

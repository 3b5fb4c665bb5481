"""The LLM gateway's cost per model call: ``python -m benchmarks --gateway``.

A small streaming upstream (Anthropic-style SSE with usage) is called directly on loopback and
through the whole agent path: the in-sandbox forwarder (``127.0.0.1:PORT``) -> unix socket ->
the gateway process (token check, key swap, usage metering, a store row) -> upstream. Same
client, same requests, same run; the figures are the added latency (first byte of the
streamed body, and the whole response) and the throughput with 32 concurrent streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.cases import Result
from hal9999.gateway.channel import (
    GatewayPaths,
    Grant,
    gateway_pid,
    new_token,
    register,
    unregister,
)

EVENTS = [
    {"type": "message_start", "message": {"model": "bench", "usage": {"input_tokens": 9}}},
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hello"}},
    {"type": "message_delta", "usage": {"output_tokens": 3}},
]
SSE = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in EVENTS)
BODY = json.dumps({"model": "bench", "stream": True, "messages": []}).encode()


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                + f"content-length: {len(SSE)}\r\n\r\n".encode()
                + SSE
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
    except asyncio.CancelledError:
        # Cancelled at shutdown with a kept-alive connection open: ending quietly keeps
        # asyncio (3.11) from logging the cancellation as an error of the server's callback.
        writer.close()


async def _call(client: httpx.AsyncClient, url: str, token: str) -> tuple[float, float]:
    start = time.perf_counter()
    headers = {"x-api-key": token, "content-type": "application/json"}
    async with client.stream("POST", url, content=BODY, headers=headers) as response:
        first = None
        async for _ in response.aiter_raw():
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - start) * 1000, (end - start) * 1000


async def _series(url: str, token: str, runs: int) -> tuple[list[float], list[float]]:
    firsts, totals = [], []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):
            await _call(client, url, token)  # warm up connections and the gateway
        for _ in range(runs):
            first, total = await _call(client, url, token)
            firsts.append(first)
            totals.append(total)
    return firsts, totals


async def _throughput(url: str, token: str, streams: int, seconds: float) -> float:
    done = 0
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await _call(client, url, token)
                done += 1

        await asyncio.gather(*(worker() for _ in range(streams)))
    return done / seconds


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when unknown)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def gateway_cases(runs: int, streams: int = 32) -> list[Result]:
    """Added latency per call (median, p99) and 32-stream throughput, direct vs gateway."""
    with tempfile.TemporaryDirectory(prefix="hal-bench-gw-") as tmp:
        upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
        up_port = upstream.sockets[0].getsockname()[1]
        direct = f"http://127.0.0.1:{up_port}/v1/messages"
        paths = GatewayPaths(Path(tmp))
        grant = Grant(task_id="bench", token=new_token(), upstream=f"http://127.0.0.1:{up_port}",
                      key="sk-bench", settings={"concurrency": 64})  # fmt: skip
        os.environ["HAL_GATEWAY_IDLE_S"] = "5"
        await register(paths, grant)
        port = 40000 + os.getpid() % 10000
        fwd = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(paths.forwarder), str(port), str(paths.socket)
        )
        await fwd.wait()  # returns once it listens; its server child serves until we exit
        through = f"http://127.0.0.1:{port}/v1/messages"
        async with upstream:
            d_first, d_total = await _series(direct, "sk-bench", runs)
            pid = await gateway_pid(paths)
            cpu_before = _cpu_s(pid)
            g_first, g_total = await _series(through, grant.token, runs + 20)
            # The gateway process's own CPU per call: a figure the machine's load does not
            # move (the latencies above are wall clock, shared with every other process).
            cpu_ms = (_cpu_s(pid) - cpu_before) * 1000 / (runs + 20)
            d_rate = await _throughput(direct, "sk-bench", streams, 3.0)
            g_rate = await _throughput(through, grant.token, streams, 3.0)
        await unregister(paths, grant.token)  # the gateway goes idle and exits
    added_first = statistics.median(g_first) - statistics.median(d_first)
    added_total = statistics.median(g_total) - statistics.median(d_total)
    p99 = _p99(g_first) - _p99(d_first)
    return [
        Result("gateway: added latency to first byte, median", added_first, "ms",
               f"direct {statistics.median(d_first):.2f} ms", f"{added_first:.2f} ms",
               "<= 2 ms", added_first <= 2.0),
        Result("gateway: added latency to first byte, p99", p99, "ms",
               f"direct p99 {_p99(d_first):.2f} ms", f"{p99:.2f} ms", "report", True),
        Result("gateway: added latency, whole response, median", added_total, "ms",
               f"direct {statistics.median(d_total):.2f} ms", f"{added_total:.2f} ms",
               "report", True),
        Result("gateway: CPU of the gateway process per call", cpu_ms, "ms",
               f"load average {os.getloadavg()[0]:.1f}", f"{cpu_ms:.2f} ms", "report", True),
        Result(f"gateway: throughput, {streams} concurrent streams", g_rate, "calls/s",
               f"direct {d_rate:.0f} calls/s", f"{g_rate / d_rate:.2f}x", "report", True),
    ]  # fmt: skip

"""
Compression bombs against the proxy over real loopback sockets (issue 19,
finding 3).

Starts a slow OpenAI-compatible gateway (answers C{/v1/models} at once,
holds every POST C{--hold} seconds), the proxy in front of it, then sends
C{--count} concurrent C{/v1/messages} requests whose 2 KB zstd body inflates
to C{--size} bytes of valid JSON, while a prober asks C{/api/version} every
10 ms.  Reports the proxy's peak RSS (VmHWM), its RSS afterwards, the
answers' statuses, and the probes' latency percentiles.

    python bench/bombs.py --count 100 --size 60000000

Everything listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.integration.servers import (  # noqa: E402
    Twistd,
    bomb,
    freePort,
    rss,
    startGateway,
)

def post(port: int, path: str, body: bytes, headers: dict[str, str],
         timeout: float = 60) -> tuple[int, dict[str, str]]:
    """
    @return: the status and the lower-cased headers.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    except OSError as e:
        return -1, {"error": str(e)}
    finally:
        connection.close()


class Prober:
    """
    C{GET /api/version} every 10 ms on one kept-alive connection, timing
    each answer.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                connection.request("GET", "/api/version")
                connection.getresponse().read()
                self.latencies.append(time.perf_counter() - start)
            except OSError:
                self.failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._stop.wait(0.01)
        connection.close()

    def stop(self) -> dict[str, float]:
        """
        @return: probe count, failures and latency percentiles in ms.
        """
        self._stop.set()
        self._thread.join(15)
        ordered = sorted(self.latencies) or [float("nan")]

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        return {"probes": len(self.latencies), "failures": self.failures,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ordered[-1] * 1000}


def run(count: int, size: int, hold: float, proxyArgs: list[str]) -> dict[str, Any]:
    """
    One run: the gateway, the proxy, C{count} concurrent bombs, the prober.

    @return: the measurements.
    """
    gateway, url = startGateway(hold)
    port = freePort()
    proxy = Twistd("ollama-proxy", ["--listen", f"tcp:{port}:interface=127.0.0.1",
                                    "--target", url, "--fallback", "", *proxyArgs], port)
    try:
        data = bomb(size)
        # Warm up: the model list, one ordinary request.
        post(port, "/v1/messages", json.dumps({"model": "m", "max_tokens": 8, "messages": [
            {"role": "user", "content": "hi"}]}).encode(), {"Content-Type": "application/json"})
        before = rss(proxy.process.pid)[0]
        prober = Prober(port)
        time.sleep(0.3)
        headers = {"Content-Type": "application/json", "Content-Encoding": "zstd"}
        start = time.monotonic()
        with ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(
                lambda _: post(port, "/v1/messages", data, headers), range(count)))
        elapsed = time.monotonic() - start
        time.sleep(0.3)
        probes = prober.stop()
        after, peak = rss(proxy.process.pid)
        statuses = Counter(status for status, _ in answers)
        retry = all("retry-after" in h for status, h in answers if status == 503)
        # The budget is back: an ordinary request is served.
        final = post(port, "/v1/messages", json.dumps({"model": "m", "max_tokens": 8, "messages": [
            {"role": "user", "content": "hi"}]}).encode(), {"Content-Type": "application/json"})
        return {
            "bombs": count, "inflated_bytes": size, "wire_bytes": len(data),
            "statuses": dict(statuses), "503_have_retry_after": retry,
            "rss_before_mb": before / 2**20, "rss_peak_mb": peak / 2**20,
            "rss_after_mb": after / 2**20, "seconds": elapsed, "version_probes": probes,
            "ordinary_request_after": final[0],
        }
    finally:
        proxy.stop()
        gateway.shutdown()
        gateway.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=int, default=60_000_000)
    parser.add_argument("--hold", type=float, default=2.0,
                        help="seconds the gateway holds each request")
    parser.add_argument("proxyArgs", nargs="*", help="extra proxy options (after --)")
    args = parser.parse_args()
    print(json.dumps(run(args.count, args.size, args.hold, args.proxyArgs), indent=2))


if __name__ == "__main__":
    main()

"""
Instructions per request of the whole proxy process, per route, under
callgrind: the proxy (twistd, as C{run.py} starts it) runs under
C{valgrind --tool=callgrind}, every route is warmed up, then for each route
the counters are zeroed (C{callgrind_control -z}), N requests are sent one
after the other on one keep-alive connection and checked exactly as
C{run.py} checks them, and the counters are dumped.  Instructions do not
move with the load of other processes the way CPU time does, so two
builds (or two routes) compare on a shared machine; what they leave out
is the kernel's side (system calls, copies) and the cost of caches.

    bench/.venvs/bench/bin/python bench/procinstr.py --proxy-python PY [--src TREE/src] \\
        [-n 40] [--port 21730] [ROUTE ...]       # stream responses gemini anthropic nonstream

C{--src} puts a source tree first on the proxy's C{PYTHONPATH}.  About half
a minute per build (valgrind starts the proxy slowly).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402


def response(sock: socket.socket) -> bytes:
    """
    Read one HTTP/1.1 response (chunked or with a length) from C{sock}.

    @return: its body.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += recv(sock)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length is not None:
        size = int(length.group(1))
        while len(rest) < size:
            rest += recv(sock)
        return rest[:size]
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += recv(sock)
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        while len(rest) < size + 2:
            rest += recv(sock)
        if size == 0:
            return body
        body += rest[:size]
        rest = rest[size + 2:]


def recv(sock: socket.socket) -> bytes:
    data = sock.recv(1 << 16)
    if not data:
        raise RuntimeError("the proxy closed the connection")
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy-python", required=True)
    parser.add_argument("--src", default="", help="a source tree put first on the proxy's PYTHONPATH")
    parser.add_argument("-n", type=int, default=40, help="requests per route")
    parser.add_argument("--port", type=int, default=21730, help="the backend's; the proxy's is the next")
    parser.add_argument("routes", nargs="*", default=["stream", "responses", "gemini", "anthropic"])
    args = parser.parse_args()
    backendPort, proxyPort = args.port, args.port + 1
    out = os.path.join(tempfile.mkdtemp(prefix="procinstr-"), "callgrind.out")
    backend = subprocess.Popen([sys.executable, os.path.join(HERE, "leanbackend.py"), "--port",
                                str(backendPort)], stderr=subprocess.DEVNULL)
    env = {**os.environ, **({"PYTHONPATH": args.src} if args.src else {})}
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", args.proxy_python, "-c",
         "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=/dev/null",
         "ollama-proxy", "--target", f"http://127.0.0.1:{backendPort}", "--listen",
         f"tcp:{proxyPort}:interface=127.0.0.1", "--fallback", "", "--pool-size", "1024"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxyPort)).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise SystemExit("the proxy did not start under valgrind")
                time.sleep(1)
        specs = {route: run.specFor("ours", route, proxyPort, 100, "fake-model") for route in args.routes}
        sock = socket.create_connection(("127.0.0.1", proxyPort))

        def send(route: str) -> None:
            spec = specs[route]
            assert spec is not None, route
            sock.sendall(spec.raw)
            error, _ = spec.check(response(sock))
            if error:
                raise SystemExit(f"{route}: {error}")

        for route in args.routes:
            for _ in range(8):
                send(route)
        for route in args.routes:
            subprocess.run(["callgrind_control", "-z", str(proxy.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            for _ in range(args.n):
                send(route)
            subprocess.run(["callgrind_control", "-d", str(proxy.pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            time.sleep(0.5)
            dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
            with open(dumps[-1]) as f:
                found = re.search(r"^(?:summary|totals):\s*(\d+)", f.read(), re.M)
            assert found is not None, dumps[-1]
            for dump in dumps:
                os.remove(dump)
            print(f"{route:10} {int(found.group(1)) / args.n / 1000:8.0f} k instructions per request",
                  flush=True)
    finally:
        proxy.terminate()
        backend.terminate()
        proxy.wait()
        backend.wait()
        for dump in glob.glob(out + "*"):
            os.remove(dump)
        os.rmdir(os.path.dirname(out))


if __name__ == "__main__":
    main()

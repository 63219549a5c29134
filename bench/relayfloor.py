"""
The design card's floor for a chat relay: what a twisted.web C{Resource} plus
treq cost with nothing of the proxy's own work around them.

C{POST /api/chat} is read whole, decoded with C{orjson}, re-encoded as an
OpenAI body and sent with treq to the backend's C{/v1/chat/completions};
the answer is turned into Ollama's shape with the least work that passes
the load generator's exact checks:

  - non-streamed: the completion decoded, one Ollama object written;
  - streamed: treq's C{collect} feeds each read to a line splitter, every
    C{data:} line is decoded and written as one NDJSON line, C{[DONE]}
    writes the C{done} line and finishes.

No validation, routing, auth, redaction, limits, metrics or access log: a
floor, not a proxy.  The proxy is measured against it in the same run
(C{bench/run.py}, target kind C{relayfloor}), so the share of a request
that is the framework's and the share that is ours can be told apart.

Two builds of the floor, both inside the design card:

  - C{fast} (default): the proxy's own C{FastChannel} server parser
    (C{makeSite}) and C{FastAgent} under treq, as the proxy runs;
  - C{stock}: twisted.web's C{Site} and Twisted's C{Agent} under treq.

    python bench/relayfloor.py PORT BACKEND_URL [fast|stock]

Needs C{ollama_proxy} importable (the source tree on C{PYTHONPATH}) for
C{fast}, and for the C{stock} build's treq client settings.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

import orjson  # noqa: E402
import treq  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import NOT_DONE_YET, Request, Site  # noqa: E402

from ollama_proxy.upstream.pool import makeClient  # noqa: E402

CREATED = "2026-12-06T00:00:00Z"
JSON = [b"application/json"]


class Chat(Resource):
    """
    C{POST /api/chat}, streamed or not, relayed with the least work.
    """

    isLeaf = True

    def __init__(self, http: Any, target: str) -> None:
        super().__init__()
        self.http = http
        self.url = target.rstrip("/") + "/v1/chat/completions"

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        body = orjson.loads(request.content.read())
        stream = body.get("stream", True)
        out: dict[str, Any] = {"model": body["model"], "messages": body["messages"], "stream": stream}
        predict = (body.get("options") or {}).get("num_predict")
        if predict is not None:
            out["max_tokens"] = predict
        d = self.http.post(self.url, data=orjson.dumps(out), headers={b"content-type": JSON})
        if stream:
            d.addCallback(self._stream, request, body["model"])
        else:
            d.addCallback(treq.content)
            d.addCallback(self._whole, request)
        return NOT_DONE_YET

    def _whole(self, raw: bytes, request: Request) -> None:
        reply = orjson.loads(raw)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.write(orjson.dumps({
            "model": reply["model"], "created_at": CREATED,
            "message": reply["choices"][0]["message"], "done": True, "done_reason": "stop",
        }))
        request.finish()

    def _stream(self, response: Any, request: Request, model: str) -> Any:
        request.setHeader(b"content-type", b"application/x-ndjson")
        buffer = [b""]
        prefix = b'{"model":' + orjson.dumps(model) + b',"created_at":"' + CREATED.encode()

        def lines(data: bytes) -> None:
            parts = (buffer[0] + data).split(b"\n")
            buffer[0] = parts.pop()
            out = []
            for line in parts:
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    out.append(prefix + b'","message":{"role":"assistant","content":""},'
                               b'"done":true,"done_reason":"stop"}\n')
                    continue
                delta = orjson.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    out.append(prefix + b'","message":{"role":"assistant","content":'
                               + orjson.dumps(delta["content"]) + b'},"done":false}\n')
            if out:
                request.write(b"".join(out))

        d = treq.collect(response, lines)
        d.addCallback(lambda _: request.finish())
        return d


def main() -> None:
    port, target = int(sys.argv[1]), sys.argv[2]
    build = sys.argv[3] if len(sys.argv) > 3 else "fast"
    http, _ = makeClient(reactor, 1024, 10.0, httpParser="httptools" if build == "fast" else "twisted")
    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"chat", Chat(http, target))
    if build == "fast":
        from ollama_proxy.web.site import makeSite

        site: Site = makeSite(root, reactor, timeout=None, headerTimeout=None)
    else:
        site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

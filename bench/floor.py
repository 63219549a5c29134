"""
The framework's floor for a model list: a bare C{twisted.web} resource that
answers C{GET /api/tags} with a fixed JSON body of about 100 bytes (the
shape the load generator checks), on the same reactor the proxy uses.  The
warm C{/api/tags} of the proxy is compared with this in the same run.

    python bench/floor.py PORT
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Request, Site  # noqa: E402

BODY = b'{"models":[{"name":"fake-model:latest","model":"fake-model:latest","size":0,"digest":"0"}]}'


class Tags(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return BODY


def main() -> None:
    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"tags", Tags())
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()

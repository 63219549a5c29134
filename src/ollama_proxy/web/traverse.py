# -*- test-case-name: tests.web.test_traverse -*-
"""
A request's way from its complete head to its resource: twisted.web's
C{Request.process} (the C{Server} and C{Date} headers, C{prepath} and
C{postpath}, the site's traversal, an encoding resource's encoder, the
render, a failure answered by C{processingFailed}), with the C{Date}
value formatted once per second instead of once per request.

Twisted formats the date on every request (C{datetimeToString}: a
C{gmtime} and a nine-field C{%} format, about 3 us, the largest single
step between the parsed body and the resource's C{render} on a chat
request: C{bench/RESULTS.md} "reqside").  The value names a second, so
one formatting serves every request of that second: the bytes are the
ones Twisted would write.
"""

from __future__ import annotations

import time
from typing import Callable
from urllib.parse import unquote_to_bytes

from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.resource import EncodingResourceWrapper
from twisted.web.server import Request, version

SERVER = [version]
"""twisted.web's C{Server} value, as its C{process} sets it."""


class HTTPDate:
    """
    The C{Date} header's value for now, formatted when the second changes.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        """
        @param now: the wall clock Twisted's C{datetimeToString} reads.
        """
        self._now = now
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        """
        @return: C{datetimeToString()} for the current second.
        """
        second = int(self._now())
        if second != self._second:
            self._value = datetimeToString(second)
            self._second = second
        return self._value


httpDate = HTTPDate()


def traverse(request: Request) -> None:
    """
    What twisted.web's C{Request.process} does, with the C{Date} from
    L{httpDate}; the asterisk-form target (C{OPTIONS *}) is left to
    twisted.web's own.

    An encoding resource (C{EncodingResourceWrapper}, the one
    implementation of Twisted's private C{_IEncodingResource}) is handed to
    twisted.web's own C{process} whole, which traverses again and sets the
    request's private encoder itself: the proxy's tree has none, so no
    private name is set here for it.

    @param request: a request whose body is complete.
    """
    if request.path == b"*":
        Request.process(request)
        return
    site = request.channel.site  # type: ignore[attr-defined]
    request.site = site
    headers = request.responseHeaders
    headers.setRawHeaders(b"Server", SERVER)
    headers.setRawHeaders(b"Date", [httpDate()])
    request.prepath = []
    # (A segment without "%" is its own decoding: no call for it.)
    request.postpath = [unquote_to_bytes(segment) if b"%" in segment else segment
                        for segment in request.path[1:].split(b"/")]
    try:
        resource = site.getResourceFor(request)
        if isinstance(resource, EncodingResourceWrapper):
            Request.process(request)
            return
        request.render(resource)
    except BaseException:
        request.processingFailed(Failure())

# -*- test-case-name: tests.test_relay -*-
"""
Moving an upstream body to the client as it arrives.

This is the only module that sees both sides of a stream.  It feeds each
socket read from C{treq.collect} through a pure transform (SSE to NDJSON, or
identity for passthrough) and writes the result once per read.  The upstream
transport is registered as the client request's push producer, so a slow
client pauses reading from the backend (back-pressure) and a client that
leaves closes the backend connection at once (no tokens burnt for nobody).
An idle timer bounds a stalled stream.
"""

from __future__ import annotations

from typing import Any, Callable, cast

import treq
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from ollama_proxy.errors import UpstreamError, UpstreamTimeout
from ollama_proxy.sse import SSELineTooLong
from ollama_proxy.translate import StreamFailed
from ollama_proxy.upstream import failureToError


class _ProducerCapture:
    """
    A stand-in for an L{IResponse} that remembers the transport handed to
    the body protocol.

    C{treq.collect} hides its protocol; its transport (a
    C{TransportProxyProducer}) is the handle that pauses, resumes and closes
    the upstream connection, so we catch it on the way through
    C{deliverBody}.
    """

    def __init__(self, response: IResponse) -> None:
        self._response = response
        self.producer: IPushProducer | None = None

    def deliverBody(self, protocol: Any) -> None:
        """
        Deliver to C{protocol} and keep its transport.

        @param protocol: treq's body collector.
        """
        self._response.deliverBody(protocol)
        self.producer = protocol.transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)


@implementer(IPushProducer)
class _IdlePausingProducer:
    """
    The upstream transport as the client request's producer, telling the
    idle timer when the client pauses and resumes the stream, so a slow
    client is never reported as a silent backend.
    """

    def __init__(
        self, producer: IPushProducer, paused: Callable[[], None], resumed: Callable[[], None]
    ) -> None:
        self._producer = producer
        self._paused = paused
        self._resumed = resumed

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()
        self._paused()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()
        self._resumed()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class ClientState:
    """
    Whether the downstream client is still there.

    @ivar gone: set once C{notifyFinish} fired (finished or disconnected).
    """

    def __init__(self, request: Request) -> None:
        self.gone = False
        self.request = request
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, result: object) -> None:
        self.gone = True


async def consume(
    response: IResponse,
    collector: Callable[[bytes], None],
    clock: IReactorTime | None,
    idleTimeout: float | None = None,
    client: ClientState | None = None,
) -> None:
    """
    Read an upstream body to its end, one C{collector} call per socket read.

    Twisted's chunked-encoding decoder hands C{treq.collect} one callback per
    HTTP chunk, and OpenAI-style servers send one chunk per SSE event, so a
    single socket read can carry a hundred callbacks.  They are joined and
    passed to C{collector} once, at the end of the reactor turn
    (C{clock.callLater(0)}), so the pipeline translates and the client gets
    one write per read, not one per token.  Nothing is held across turns:
    the last piece is delivered before this returns.

    @param response: the upstream response (unbuffered).
    @param collector: called with the bytes of each read; an exception it
        raises closes the upstream connection and is re-raised here.
    @param clock: for the idle timer and the end-of-turn flush; without
        one, every callback goes to C{collector} at once and there is no
        idle timer.
    @param idleTimeout: seconds of upstream silence after which the body is
        abandoned with L{UpstreamTimeout}; C{None} for no limit.
    @param client: when given, the upstream transport is registered as the
        client request's producer for back-pressure and disconnect.
    @raise UpstreamError: if the connection broke or went idle.
    @raise CancelledError: if the caller was cancelled; the upstream
        connection is closed first.
    """
    capture = _ProducerCapture(response)
    idle: IDelayedCall | None = None
    timedOut = False
    pending: list[bytes] = []
    flushCall: IDelayedCall | None = None
    failed: list[BaseException] = []

    def expire() -> None:
        nonlocal timedOut
        timedOut = True
        if capture.producer is not None:
            capture.producer.stopProducing()

    def flush() -> None:
        nonlocal flushCall
        flushCall = None
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if idle is not None and idle.active():
            idle.reset(idleTimeout)  # type: ignore[arg-type]
        collector(data)

    def flushAtEndOfTurn() -> None:
        try:
            flush()
        except BaseException as e:
            failed.append(e)
            if capture.producer is not None:
                capture.producer.stopProducing()

    def onData(data: bytes) -> None:
        nonlocal flushCall
        if failed:
            return
        pending.append(data)
        if clock is None:
            flush()
        elif flushCall is None:
            flushCall = clock.callLater(0, flushAtEndOfTurn)

    def paused() -> None:
        # The client cannot take more: the backend's silence from now on is
        # ours, not the backend's, so the idle timer waits too.
        if idle is not None and idle.active():
            idle.cancel()

    def resumed() -> None:
        nonlocal idle
        if idle is not None and not idle.active() and not d.called and clock is not None:
            idle = clock.callLater(idleTimeout, expire)  # type: ignore[arg-type]

    d = treq.collect(cast(Any, capture), onData)
    producer = capture.producer
    registered = False
    if client is not None and producer is not None and not client.gone:
        client.request.registerProducer(_IdlePausingProducer(producer, paused, resumed), True)
        registered = True
    if idleTimeout is not None and clock is not None and not d.called:
        idle = clock.callLater(idleTimeout, expire)
    try:
        error: BaseException | None = None
        try:
            await d
        except BaseException as e:
            error = e
        if flushCall is not None and flushCall.active():
            flushCall.cancel()
        flushCall = None
        if not failed and not isinstance(error, CancelledError):
            # What arrived before the end (or the failure) still goes out.
            try:
                flush()
            except BaseException as e:
                failed.append(e)
        if failed:
            # The collector failed on earlier bytes: that is the cause.
            error = failed[0]
            if isinstance(error, StreamFailed) and client is not None and not client.gone:
                if error.output:
                    client.request.write(error.output)
        if error is not None:
            raise error
    except CancelledError:
        if producer is not None:
            producer.stopProducing()
        raise
    except UpstreamError:
        raise
    except Exception as e:
        if timedOut:
            raise UpstreamTimeout(
                f"backend sent nothing for {idleTimeout:g} seconds"
            ) from None
        if client is not None and client.gone:
            raise CancelledError() from None
        if isinstance(e, SSELineTooLong):
            raise UpstreamError(str(e)) from None
        raise failureToError(e, "the backend") from None
    finally:
        if idle is not None and idle.active():
            idle.cancel()
        if registered and not client.gone:  # type: ignore[union-attr]
            client.request.unregisterProducer()  # type: ignore[union-attr]

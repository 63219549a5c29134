# -*- test-case-name: tests.upstream.test_body -*-
"""
Reading an upstream body as it arrives.

L{BodyReader} is the one place that reads a response body: it is the
protocol handed to C{deliverBody} (treq's C{_BodyCollector} shape: the
transport arrives in C{makeConnection}), joins the body's deliveries per
reactor turn (one delivery per socket read) for a collector, runs the idle timer, and exposes the upstream
transport as a push producer so the web layer can register it on the client
request (back-pressure, and closing the upstream when the client leaves).
L{readInto} builds one and reads a body with it (one call: the relay's);
L{readBody} and L{readJSON} are the small-body helpers built on it.  The
status check is the backend's (L{ollama_proxy.upstream.backend}).  Nothing
here knows about C{twisted.web} server requests.
"""

from __future__ import annotations

import typing
from typing import Any, Callable
from weakref import WeakKeyDictionary, ref

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import UpstreamError, UpstreamTimeout
from ollama_proxy.protocol.stream import SSELineTooLong
from ollama_proxy.upstream.message import wholeBody
from ollama_proxy.upstream.failures import failureToError

MAX_RESPONSE_BODY = 64 * 1024 * 1024
"""The largest non-streamed upstream body read into memory (a completion,
an embedding list, an error page); a larger one is a 502."""


class Client(typing.Protocol):
    """
    The client a body is read for, as the reader sees it (the web layer's
    C{ClientState}): an attribute, read where it matters, so that the
    reader never calls back into the web layer to ask.
    """

    gone: bool
    """Whether the client has left (or its answer finished)."""


async def readInto(
    response: IResponse,
    collector: Callable[[bytes], None],
    clock: IReactorTime | None,
    idleTimeout: float | None = None,
    consumer: IConsumer | None = None,
    client: Client | None = None,
) -> None:
    """
    Read C{response}'s body to its end with a new L{BodyReader}: its
    arguments, then L{BodyReader.read}'s.  Starting a read is one call.

    @raise UpstreamError: see L{BodyReader.read}.
    @raise CancelledError: see L{BodyReader.read}.
    """
    await BodyReader(collector, clock, idleTimeout, client).read(response, consumer)


async def readBody(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> bytes:
    """
    Read a whole (small) upstream body.

    The body is read with L{BodyReader}, so a cancelled
    read (the client left while a non-streaming answer was being generated)
    closes the upstream connection instead of letting it run to its end.

    @param response: a treq response.
    @param clock: the clock for the idle timer.
    @param idleTimeout: seconds of upstream silence after which the read is
        abandoned with a 504; C{None} (or no C{clock}) for no limit.
    @return: the bytes.
    @raise UpstreamError: if the connection broke or went idle, or the body
        is larger than L{MAX_RESPONSE_BODY}.
    """
    whole = wholeBody(response)
    if whole is not None:
        # It came with the head (a small answer): nothing to wait for, no
        # reader to build.  The connection went back to its pool already.
        if len(whole) > MAX_RESPONSE_BODY:
            raise UpstreamError(f"backend response is larger than {MAX_RESPONSE_BODY} bytes")
        return whole
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_RESPONSE_BODY:
            # Raised inside treq's collector: the connection is closed.
            raise UpstreamError(
                f"backend response is larger than {MAX_RESPONSE_BODY} bytes"
            )
        chunks.append(data)

    await readInto(response, collect, clock, idleTimeout)
    return b"".join(chunks)


async def readJSON(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> Any:
    """
    Read and decode a JSON upstream body.

    @param response: a treq response.
    @param clock: see L{readBody}.
    @param idleTimeout: see L{readBody}.
    @return: the decoded value.
    @raise UpstreamError: if the body is not JSON, or nests deeper than
        L{codec.MAX_DEPTH}.
    """
    body = await readBody(response, clock, idleTimeout)
    try:
        return codec.loadsBounded(body)
    except codec.TooDeep:
        raise UpstreamError(
            f"backend returned a body nested more than {codec.MAX_DEPTH} levels deep"
        ) from None
    except codec.JSONDecodeError:
        # The whole body: the error funnel redacts it, then cuts it
        # (L{ollama_proxy.web.bridge.MAX_ERROR_TEXT}); cut here, a key at
        # the cut would escape as a prefix.
        raise UpstreamError(
            "backend returned a body that is not JSON: " + body.decode("utf-8", "replace")
        ) from None


class _EndOfTurn:
    """
    The calls due at the end of one reactor turn, made by one delayed call:
    with a thousand streams each read at every turn, one C{callLater(0)}
    per turn instead of one per stream and read.
    """

    def __init__(self, clock: IReactorTime) -> None:
        # Weakly: the registry's key must be able to die (a test's clock).
        self._clock = ref(clock)
        self.due: list[Callable[[], None]] = []
        """The calls due (L{BodyReader} appends to it itself, then asks
        L{pending})."""
        self.call: Any = None

    def add(self, call: Callable[[], None]) -> None:
        self.due.append(call)
        self.pending()

    def pending(self) -> None:
        """
        Make sure the turn's call is made: none due yet, or it was cancelled
        by someone else (trial cancels what a test leaves); the calls due
        must still run.  (C{cancelled}, Twisted's C{DelayedCall} attribute,
        not C{active()}: a call made is C{None} here, L{_run} says so first.)
        """
        scheduled = self.call
        if scheduled is None or scheduled.cancelled:
            clock = self._clock()
            assert clock is not None  # a reader holds its clock
            self.call = clock.callLater(0, self._run)

    def _run(self) -> None:
        self.call = None
        due, self.due = self.due, []
        for call in due:
            call()


_turns: WeakKeyDictionary[IReactorTime, _EndOfTurn] = WeakKeyDictionary()


def _turnOf(clock: IReactorTime) -> _EndOfTurn:
    turn = _turns.get(clock)
    if turn is None:
        turn = _turns[clock] = _EndOfTurn(clock)
    return turn


def endOfTurn(clock: IReactorTime) -> Callable[[Callable[[], None]], None]:
    """
    @param clock: the reactor.
    @return: a function that calls its argument (which must not raise) at
        the end of the current reactor turn, after the reads of this turn,
        with every other call due then.
    """
    return _turnOf(clock).add


@implementer(IPushProducer)
class _IdlePausingProducer:
    """
    The upstream transport as the consumer's producer, telling the
    idle timer when the consumer pauses and resumes the stream, so a slow
    consumer is never reported as a silent backend.
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


class BodyReader(Protocol):
    """
    Read one upstream body to its end, one C{collector} call per socket read.

    It is the protocol Twisted delivers the body to (as treq's
    C{collect()} collector is): the transport it gets in C{makeConnection}
    is the handle that pauses, resumes and closes the upstream connection.

    Twisted's chunked-encoding decoder hands the body protocol one
    C{dataReceived} per HTTP chunk, and OpenAI-style servers send one chunk per SSE event, so a
    single socket read can carry a hundred callbacks.  They are joined and
    passed to C{collector} once, at the end of the reactor turn (one
    C{clock.callLater(0)} for every stream read in that turn, L{endOfTurn}), so the pipeline translates and the client gets
    one write per read, not one per token.  Nothing is held across turns:
    the last piece is delivered before L{read} returns.  The body's first
    bytes are the exception: they go to C{collector} at once, in the read
    that brought them (with the head, once the producer is registered), so
    that a new stream's first line is not queued behind the end of a turn
    that relays a thousand other streams (issue 23); the end-of-turn
    joining starts after them.

    @ivar producer: the upstream transport, set by L{read} before its first
        C{await}; the web layer registers it on the client request.
    """

    def __init__(
        self,
        collector: Callable[[bytes], None],
        clock: IReactorTime | None,
        idleTimeout: float | None = None,
        client: Client | None = None,
    ) -> None:
        """
        @param collector: called with the bytes of each read; an exception it
            raises closes the upstream connection and is re-raised by L{read}.
        @param clock: for the idle timer and the end-of-turn flush; without
            one, every callback goes to C{collector} at once and there is no
            idle timer.
        @param idleTimeout: seconds of upstream silence after which the body is
            abandoned with L{UpstreamTimeout}; C{None} for no limit.
        @param client: the client this body is for, if it may leave (a
            broken upstream is then the client's doing, not the backend's).
        """
        self._collector = collector
        self._clock = clock
        self._idleTimeout = idleTimeout
        self._client = client
        self._idle: IDelayedCall | None = None
        # When the collector was last given data (the idle timer's start);
        # read per delivery only with an idle timeout to keep.
        self._lastData = float("-inf")
        self._seconds = clock.seconds if clock is not None and idleTimeout is not None else None
        self._timedOut = False
        self._pending: list[bytes] = []
        self._due = False
        self._delivered = False
        self._turn = _turnOf(clock) if clock is not None else None
        self._flushLater = self._flushHeld
        self._failed: list[BaseException] = []
        self._ended = False
        self._finished: Deferred[None] | None = None
        self.producer: IPushProducer | None = None
        self.registered = False

    def makeConnection(self, transport: ITransport) -> None:
        """
        The body's transport: the upstream connection, as a producer.
        """
        super().makeConnection(transport)
        self.producer = IPushProducer(transport, None)

    def dataReceived(self, data: bytes) -> None:
        """
        One delivery of the body (one socket read's chunks); a collector
        that fails on it (when it runs at once: the first bytes, or without
        a clock) closes the connection and ends L{read} with its error, as
        treq's collector does.
        """
        if self._failed:
            return
        self._pending.append(data)
        turn = self._turn
        if turn is not None and (self._delivered or self._due):
            # Joined per turn: one end-of-turn call for every stream read
            # (L{_EndOfTurn.add}, written out: this is every read's way).
            if not self._due:
                self._due = True
                turn.due.append(self._flushLater)
                scheduled = turn.call
                if scheduled is None or scheduled.cancelled:
                    turn.pending()
            return
        # The body's first bytes go at once (issue 23): a stream's first
        # line does not wait behind the end of a turn in which a thousand
        # other streams are read and relayed.  There is nothing of this
        # stream to join it with yet.
        try:
            self._flush()
        except BaseException:
            if self.transport is not None:
                self.transport.loseConnection()
            finished, self._finished = self._finished, None
            if finished is not None:
                finished.errback(Failure())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The body ended: whole (or without a length, as a connection close
        says), or broken.
        """
        finished, self._finished = self._finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(None)
        else:
            finished.errback(reason)

    def _expire(self) -> None:
        """
        The idle timer ran out, or the data since it was armed moved its
        end on: it is armed again for what is left of the timeout after
        the last delivery.  (Each delivery stamps the time, L{_flush}; the
        timer is not moved per delivery, which cost two calls per read.)
        """
        clock, timeout = self._clock, self._idleTimeout
        if clock is not None and timeout is not None:
            left = self._lastData + timeout - clock.seconds()
            if left > 0:
                self._idle = clock.callLater(left, self._expire)
                return
        self._timedOut = True
        if self.producer is not None:
            self.producer.stopProducing()

    def _flush(self) -> None:
        self._due = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._delivered = True
        if self._seconds is not None:
            self._lastData = self._seconds()
        self._collector(data)

    def _flushHeld(self) -> None:
        """
        The end of the turn: the reads of this turn to the collector
        (L{_flush}'s work, in the one call the turn makes per stream); a
        collector that fails stops the upstream and L{read} raises it.
        """
        if not self._due:
            return  # read() flushed it already
        self._due = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._delivered = True
        if self._seconds is not None:
            self._lastData = self._seconds()
        try:
            self._collector(data)
        except BaseException as e:
            self._failed.append(e)
            if self.producer is not None:
                self.producer.stopProducing()

    def pauseIdle(self) -> None:
        """
        The client cannot take more: the backend's silence from now on is
        ours, not the backend's, so the idle timer waits too.
        """
        if self._idle is not None and self._idle.active():
            self._idle.cancel()

    def resumeIdle(self) -> None:
        """
        The client takes data again: restart the idle timer.
        """
        idle = self._idle
        if (
            idle is not None and not idle.active() and not self._ended
            and self._clock is not None and self._idleTimeout is not None
        ):
            self._idle = self._clock.callLater(self._idleTimeout, self._expire)

    async def read(self, response: IResponse, consumer: IConsumer | None = None) -> None:
        """
        Read C{response}'s body to its end.

        @param response: the upstream response (unbuffered).
        @param consumer: what the body is for (the client's request): once
            the body is being read, before any data is delivered, the
            upstream transport is registered on it as a streaming producer
            that also pauses the idle timer while the consumer pauses it
            (L{registered} says so), and unregistered when the read ends,
            whatever its end, unless the client is gone (C{client}).
        @raise UpstreamError: if the connection broke or went idle; a
            L{StreamFailed} raised by the collector as it is.
        @raise CancelledError: if the caller was cancelled (or the client
            left); the upstream connection is closed first.
        """
        if response.length == 0:
            d: Deferred[None] = succeed(None)
        else:
            d = self._finished = Deferred()
            # What arrived with the head is delivered inside deliverBody,
            # held without asking for an end-of-turn call: a body that
            # ended there too (a small answer in one read) is passed on
            # below, after the end, and never needs one; a body still
            # open has it passed on below, at once, once the producer is
            # registered.
            self._due = True
            response.deliverBody(self)
            if not d.called and not self._pending:
                self._due = False
        if consumer is not None and self.producer is not None:
            consumer.registerProducer(
                _IdlePausingProducer(self.producer, self.pauseIdle, self.resumeIdle), True
            )
            self.registered = True
        clock, idleTimeout = self._clock, self._idleTimeout
        if idleTimeout is not None and clock is not None and not d.called:
            self._idle = clock.callLater(idleTimeout, self._expire)
        if self._due and not d.called:
            # The first bytes, which came with the head: sent now, not at
            # the end of this turn (see L{dataReceived}).
            self._flushHeld()
        try:
            error: BaseException | None = None
            try:
                await d
            except BaseException as e:
                error = e
            self._due = False
            if not self._failed and not isinstance(error, CancelledError):
                # What arrived before the end (or the failure) still goes out.
                try:
                    self._flush()
                except BaseException as e:
                    self._failed.append(e)
            if self._failed:
                # The collector failed on earlier bytes: that is the cause.
                error = self._failed[0]
            if error is not None:
                raise error
        except CancelledError:
            if self.producer is not None:
                self.producer.stopProducing()
            raise
        except UpstreamError:
            raise
        except Exception as e:
            if self._timedOut:
                raise UpstreamTimeout(
                    f"backend sent nothing for {idleTimeout:g} seconds"
                ) from None
            if self._client is not None and self._client.gone:
                raise CancelledError() from None
            if isinstance(e, SSELineTooLong):
                raise UpstreamError(str(e)) from None
            raise failureToError(e, "the backend") from None
        finally:
            self._ended = True
            if self._idle is not None and self._idle.active():
                self._idle.cancel()
            if self.registered and consumer is not None:
                # Who registered the producer takes it back off (the
                # channel refuses a second one otherwise); a gone client's
                # request has nothing to unregister from.
                self.registered = False
                if self._client is None or not self._client.gone:
                    consumer.unregisterProducer()

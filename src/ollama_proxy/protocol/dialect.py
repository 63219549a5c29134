# -*- test-case-name: tests.protocol.test_dialect -*-
"""
What a client dialect is, as one object with one lifecycle.

A dialect (L{Dialect}) makes a fresh L{Encoder} for every stream and the
whole reply object for a non-streamed answer, and has one L{ErrorShape}
that writes its errors, before the stream began (a status and a body) and
after it (the dialect's own error event, never a fake success).  The web
funnel asks the dialect; it never guesses from a content type.

An encoder's life is C{START -> OPEN -> DONE}, as h11's connection states
are: the first bytes it writes open the stream (the dialect's opening
events, if it has any), a L{Finish} or an error ends it, and anything asked
of it after the end raises L{EncoderMisuse} instead of writing bytes a
client would read as a second reply.  Subclasses supply the bytes; this
module owns the states.
"""

from __future__ import annotations

import enum
from typing import Callable, Mapping, NamedTuple, Protocol, Sequence

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.events import Event, Finish, Reply, replyEvents
from ollama_proxy.protocol.requests import ChatRequest, TextRequest


class EncoderState(enum.Enum):
    """
    Where an encoder is in its one stream.
    """

    START = "start"
    """Nothing written yet."""
    OPEN = "open"
    """The stream began (its opening, if any, is written)."""
    DONE = "done"
    """The reply ended, with its L{Finish} or an error; nothing may follow."""


START = EncoderState.START
OPEN = EncoderState.OPEN
DONE = EncoderState.DONE


class EncoderMisuse(Exception):
    """
    An encoder was asked for bytes its stream can no longer carry (events
    after the end, a second end).  A programming error, as h11's
    C{LocalProtocolError}: it is raised rather than written.
    """


class ReplyFilter(Protocol):
    """
    Rewrites a reply before any dialect encodes it (the tool-call ids made
    unique, L{ollama_proxy.protocol.toolids.ToolIds}).
    """

    def events(self, events: Sequence[Event]) -> Sequence[Event]:
        """
        @return: C{events}, rewritten (the same sequence if unchanged).
        """

    def reply(self, reply: Reply) -> Reply:
        """
        @return: C{reply}, rewritten.
        """


VARYING = frozenset("0123456789-+.:,TZ{}[] ")
"""The characters of an encoder's varying framing (numbers, RFC 3339
timestamps) and of the JSON punctuation around them (L{Encoder.framing})."""


class Encoder:
    """
    The lifecycle of one streamed reply in a client dialect.

    Subclasses set L{contentType} and implement L{_encode} (their own loop
    over one read's events, which at the L{Finish} raises L{EncoderMisuse}
    if events follow it and sets C{state} to L{DONE}: written in the loop,
    not called back here, so that a read's encoding runs in the dialect's
    own module) and L{_failure}; a dialect with opening events overrides
    L{_opening}.

    @ivar state: the L{EncoderState}.
    @ivar filter: what rewrites the reply's events before this encoder
        writes them, if anything.
    """

    contentType: bytes = b""
    """The response's C{Content-Type}."""

    state: EncoderState = START
    filter: ReplyFilter | None = None

    def _opening(self) -> bytes:
        """
        @return: the events that open the stream (none by default).
        """
        return b""

    def _encode(self, events: Sequence[Event]) -> bytes:
        """
        @param events: one read's events, the stream already open.
        @return: their bytes.
        """
        raise NotImplementedError

    def _failure(self, message: str) -> bytes:
        """
        @param message: why the stream failed.
        @return: the dialect's mid-stream error event.
        """
        raise NotImplementedError

    def framing(self) -> bytes | None:
        """
        What the next L{encode} (or L{encodeRead}) of plain text deltas (content only: no
        thinking, no log-probabilities, no other event) writes besides the
        texts, for the outbound filter to check once instead of on every
        write (L{ollama_proxy.protocol.redact.EventRedactor.certifies}).

        The contract, for the bytes such an C{encode} returns: each delta
        is one chunk ending in a newline, made of its text as
        L{codec.dumps} writes it, the constant pieces returned here (in any
        order, several times; the returned value joins them with
        newlines), and varying parts (numbers, timestamps) that sit between
        JSON punctuation: every run of the output without a quote or a
        newline that holds a varying byte consists of L{VARYING} characters
        only.  C{tests/protocol/test_stream.py} checks it for every dialect.

        @return: the constant pieces, or C{None} when the next plain text
            may be written otherwise (the stream not yet open, a block to
            open first, no template).
        """
        return self._framing() if self.state is OPEN else None

    def _framing(self) -> bytes | None:
        """
        @return: see L{framing}; the stream is open.  C{None} (no
            template) by default.
        """
        return None

    def _open(self) -> bytes:
        """
        Move from C{START} to C{OPEN}.

        @return: the opening events, if they were not written yet.
        @raise EncoderMisuse: after the end.
        """
        state = self.state
        if state is OPEN:
            return b""
        if state is DONE:
            raise EncoderMisuse(f"{type(self).__name__}: the stream already ended")
        self.state = OPEN
        return self._opening()

    def encode(self, events: Sequence[Event]) -> bytes:
        """
        @param events: the events of one upstream read, in order.
        @return: the bytes to write to the client now (with the stream's
            opening, the first time).
        @raise EncoderMisuse: after the end, or for events after a
            L{Finish}.
        """
        if self.filter is not None:
            events = self.filter.events(events)
        if self.state is not OPEN:
            return self._open() + self._encode(events)
        return self._encode(events)

    def encodeRead(self, events: Sequence[Event]) -> tuple[bytes, bytes | None]:
        """
        L{encode} one upstream read, and say which template wrote it: the
        one call a stream makes per read.

        The framing is the encoder's before this read (L{framing}): the
        pieces of the template that writes plain text deltas in the state
        the read began in.  A read that opens the stream or a text block
        first writes bytes no template holds, and gets C{None}.  The
        caller checks the framing before it writes or certifies the output
        (L{ollama_proxy.protocol.stream.TranslatedStream.feed}); a framing
        that fails the check sends the read through the byte filter.

        @param events: the events of one upstream read, in order.
        @return: the bytes to write to the client now, and the framing
            they were written in (C{None}: not one template's).
        @raise EncoderMisuse: as L{encode}.
        """
        framing = self.framing()
        if self.filter is not None:
            events = self.filter.events(events)
        if self.state is not OPEN:
            return self._open() + self._encode(events), framing
        return self._encode(events), framing

    def _write(self, events: Sequence[Event]) -> bytes:
        head = self._open() if self.state is not OPEN else b""
        return head + self._encode(events)

    def error(self, message: str) -> bytes:
        """
        @param message: why the stream failed after it began.
        @return: the dialect's mid-stream error (after the opening, if it
            was not written yet); the stream is over.
        @raise EncoderMisuse: if the stream already ended.
        """
        head = self._open()
        self.state = DONE
        return head + self._failure(message)

    def whole(self, reply: Reply, end: int) -> bytes:
        """
        A whole answer where the client asked for a stream (the backend
        ignored C{"stream": true}).

        @param reply: the answer.
        @param end: now (ns).
        @return: the complete stream's bytes, success included (after the
            opening, if keep-alives did not write it already).
        @raise EncoderMisuse: if the stream already ended.
        """
        if self.filter is not None:
            reply = self.filter.reply(reply)
        return self._wholeReply(reply, end)

    def _wholeReply(self, reply: Reply, end: int) -> bytes:
        """
        @return: the whole reply (already filtered) as this dialect writes
            it: by default, the stream its events would have made.
        """
        return self._write(replyEvents(reply, end))


class ErrorShape(Protocol):
    """
    How a dialect writes an error, before and after its stream began.
    """

    contentType: bytes
    """The C{Content-Type} of an error answered before the stream."""

    def body(self, status: int, message: str, param: str | None = None) -> bytes:
        """
        @param status: the HTTP status.
        @param message: the error text (already without secrets).
        @param param: the request field at fault, for dialects that name it.
        @return: the error answer's body.
        """

    def midStream(self, encoder: Encoder | None, message: str) -> bytes:
        """
        @param encoder: the stream's encoder, or C{None} when the proxy
            relays a stream it did not encode.
        @param message: the error text (already without secrets).
        @return: the error event that ends the stream.
        """


JSON_TYPE = b"application/json; charset=utf-8"


class EncodedErrors:
    """
    An L{ErrorShape} whose mid-stream error is the encoder's own; its
    pre-stream body is a JSON object made by a function of the status and
    the message.
    """

    contentType = JSON_TYPE

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        raise NotImplementedError

    def body(self, status: int, message: str, param: str | None = None) -> bytes:
        return codec.dumps(self._object(status, message, param))

    def _relayed(self, message: str) -> bytes:
        """
        @return: the error event for a relayed stream (no encoder of ours).
        """
        return openAIErrorEvent(message)

    def midStream(self, encoder: Encoder | None, message: str) -> bytes:
        if encoder is None:
            return self._relayed(message)
        if encoder.state is DONE:
            # The reply is complete on the client's side: a second ending
            # would be read as a broken stream.
            return b""
        return encoder.error(message)


def openAIErrorEvent(message: str) -> bytes:
    """
    The error event of a stream the proxy relays as the backend sent it
    (no encoder of its own): OpenAI's error object, as Ollama's own C{/v1}
    routes send it (OpenAI SDKs raise on it), after a blank line that ends
    any event the backend left unfinished.

    @param message: the error text.
    """
    error = {"message": message, "type": "api_error", "param": None, "code": None}
    return b"\n\ndata: " + codec.dumps({"error": error}) + b"\n\n"


class Dialect(Protocol):
    """
    A client dialect's reply side: a fresh encoder per stream, the whole
    reply object, and its error shape.  (Its request side is a parser that
    returns a L{ollama_proxy.protocol.requests.ChatRequest}.)
    """

    @property
    def errors(self) -> ErrorShape:
        """
        The dialect's errors, before and after its stream began.
        """

    def streamEncoder(self, model: str, start: int) -> Encoder:
        """
        @param model: the model name as the client sent it.
        @param start: when the request arrived (ns).
        @return: a fresh encoder for one stream.
        """

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @param reply: the whole answer.
        @param model: the model name as the client sent it.
        @param start: when the request arrived (ns).
        @param end: now (ns).
        @return: the non-streamed answer object.
        """


class Generation(NamedTuple):
    """
    A parsed generation request: what goes to the backend and the reply
    side bound to it.

    @ivar request: the typed request (a chat, or a raw text completion).
    @ivar reply: the reply side (L{Dialect}).
    @ivar dropped: the request's fields the backend gets nothing for,
        named in the debug log.
    @ivar asChat: for a text completion, the same prompt as a one-turn
        chat, made only for a backend without C{/v1/completions}
        (C{None}: it has no chat equivalent, as fill-in-the-middle).
    """

    request: ChatRequest | TextRequest
    reply: Dialect
    dropped: tuple[str, ...] = ()
    asChat: Callable[[], ChatRequest] | None = None


class Answer(NamedTuple):
    """
    An answer a dialect gives without asking a backend (Ollama's load and
    unload replies to a request with nothing to generate).

    @ivar body: the answer object.
    """

    body: JSON


class RouteDialect(Protocol):
    """
    A client dialect as one route speaks it, made once for the route: where
    the model is named (the routing hook: the body, or the URL), the
    parser, and the error shape.  Parsing a request gives the typed request
    and the reply side (L{Dialect}) bound to it.  The web layer's generic
    generation resource runs every such dialect the same way: C{model},
    then the route, then C{parse}.
    """

    @property
    def errors(self) -> ErrorShape:
        """
        The dialect's errors, before and after its stream began.
        """

    @property
    def native(self) -> str | None:
        """
        The backend API that serves this dialect as it is (C{"messages"},
        C{"responses"}: a backend listing it in C{native} gets the request
        relayed), or C{None}.
        """

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        """
        The routing hook, run before a backend is chosen.

        @param body: the decoded request body.
        @param params: the route's parameters from the URL: the template's,
            and the query string's (first value; the template's win).
        @return: the model name as the client gave it (not checked yet:
            anything but a non-empty string is left to L{parse} to refuse).
        @raise ollama_proxy.protocol.errors.BadRequest: for what the
            dialect refuses before routing.
        """

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation | Answer:
        """
        @param body: the decoded request body.
        @param params: the route's parameters from the URL (as for
            L{model}).
        @param override: the routed model's configuration (its default
            options).
        @return: the typed request and its reply side, or an answer that
            needs no backend.
        @raise ollama_proxy.protocol.errors.BadRequest: for a malformed
            request.
        """


class Template(Protocol):
    """
    Where a route is mounted and which paths below it it serves: a
    L{ollama_proxy.web.generation.RouteTemplate}, or a dialect's own URL
    grammar (Gemini's, whose model may hold C{/}).
    """

    @property
    def prefix(self) -> tuple[str, ...]:
        """
        The fixed segments the route is mounted at.
        """

    @property
    def label(self) -> str:
        """
        The route's label in logs and metrics (never a value from the URL).
        """

    def match(self, rest: Sequence[str]) -> dict[str, str] | None:
        """
        @param rest: the request's decoded path segments after L{prefix}.
        @return: the parameters, or C{None} if the path is not this route.
        """

# -*- test-case-name: tests.web.test_chat -*-
"""
The web side of the translation hub: one way to answer a generation
request in any client dialect.

The generation resource (L{ollama_proxy.web.generation}) parses a request
in its route's dialect into the hub's typed request and hands it to
L{generate}, which posts the OpenAI body the builder makes (a chat, or a
raw text completion) with the model's C{extra} fields, and L{answer} reads
the reply (streamed through the relay, or whole), has the dialect encode
it, and notes the token counts on the exchange for the log line and the
metrics.  A new dialect adds nothing here.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import Dialect, Encoder
from ollama_proxy.protocol.backend_reader import ChatStreamReader, readReply
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.openai_request import ChatBody, TextBody, chatBody, textBody
from ollama_proxy.protocol.relayguard import relayGuard
from ollama_proxy.protocol.requests import ChatRequest, TextRequest
from ollama_proxy.protocol.stream import SSELineTooLong, TranslatedStream
from ollama_proxy.protocol.toolids import uniqueToolIds
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.body import readJSON
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import DEBUG_EXCERPT, Exchange
from ollama_proxy.web.fleet import send
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.observe import streaming
from ollama_proxy.web.relay import relayBody

log = Logger()


@attrs.frozen
class ReadOptions:
    """
    How to read the backend's reply.

    @ivar dropThinking: the client turned thinking off.
    @ivar thinkTags: a leading C{<think>} block in the content is thinking.
    @ivar text: the backend answers a legacy C{/v1/completions} request.
    """

    dropThinking: bool = False
    thinkTags: bool = True
    text: bool = False


def upstreamBody(ctx: ProxyContext, route: Route, built: ChatBody | TextBody, ex: Exchange) -> JSON:
    """
    An OpenAI request body as it goes to the routed backend: the model's
    configured extra fields added over the translated ones (the
    configuration wins: these are fields the operator wants on every call;
    the route carries them, so nothing is asked of the router again),
    logged with C{--debug}.

    @param ctx: the shared context.
    @param route: where it goes.
    @param built: the body the builder made, every field named; from here
        on an open object, as the configuration may add any field.
    @param ex: the exchange it is for (whose client's key is redacted from
        the debug log, with the proxy's own secrets).
    @return: the body, completed.
    """
    body: JSON = dict(built)
    body.update(route.override.extra)
    if ctx.debug:
        # An excerpt, as the request line's: a 60 MB body must not become a
        # 60 MB log line (written twice by the JSON log) per request.
        log.debug("upstream request {body}", body=ex.excerpt(codec.dumps(body).decode(), DEBUG_EXCERPT))
    return body


async def generate(
    ctx: ProxyContext,
    ex: Exchange,
    route: Route,
    request: ChatRequest | TextRequest,
    dialect: Dialect,
    encoder: Encoder | None = None,
    asChat: Callable[[], ChatRequest] | None = None,
) -> JSON | None:
    """
    The hub's path for a parsed request, whatever the client's dialect:
    the OpenAI body (the model's C{extra} fields added by L{upstreamBody})
    to the routed backend, the reply in C{dialect}, its tool-call ids
    unique within the conversation (L{ollama_proxy.protocol.toolids}).

    @param ctx: the shared context.
    @param ex: the exchange.
    @param route: where the request goes.
    @param request: the parsed request: a chat, or a raw text completion
        (to C{/v1/completions}; a backend without that route gets it as
        C{asChat}, see L{ollama_proxy.upstream.backend.Backend.postText}).
    @param dialect: the client's dialect.
    @param encoder: the stream's encoder, if the caller made it already
        (to write keep-alives while the backend is silent).
    @param asChat: for a text completion, the same prompt as a chat.
    @return: the non-streamed object, or C{None} after streaming.
    """
    if isinstance(request, TextRequest):
        return await _complete(ctx, ex, route, request, dialect, encoder, asChat)
    route, response = await send(ctx, ex, route, lambda member: member.backend.postChat(
        upstreamBody(ctx, member, chatBody(request, member.modelId, member.backend.flavor), ex),
        clientKey=ex.presented,
    ))
    unique = uniqueToolIds(dialect, request, encoder=encoder)
    return await answer(
        ctx, ex, route.backend, response, unique, request.stream,
        ReadOptions(dropThinking=request.think is False), encoder,
    )


async def _complete(
    ctx: ProxyContext,
    ex: Exchange,
    route: Route,
    request: TextRequest,
    dialect: Dialect,
    encoder: Encoder | None,
    asChat: Callable[[], ChatRequest] | None,
) -> JSON | None:
    """
    L{generate} for a raw text completion: C{/v1/completions}, or the chat
    C{asChat} makes for a backend without that route.
    """

    def post(member: Route) -> Awaitable[tuple[IResponse, bool]]:
        flavor = member.backend.flavor
        textRequest = upstreamBody(ctx, member, textBody(request, member.modelId, flavor), ex)
        if asChat is None:
            return member.backend.postText(textRequest, None, clientKey=ex.presented)
        chat = asChat

        def chatRequest() -> JSON:
            return upstreamBody(ctx, member, chatBody(chat(), member.modelId, flavor), ex)

        return member.backend.postText(textRequest, chatRequest, clientKey=ex.presented)

    route, (response, isChat) = await send(ctx, ex, route, post)
    # Raw text and code: a leading <think> is the user's, unless the
    # prompt went to a chat model after all.
    options = ReadOptions(thinkTags=isChat, text=not isChat)
    return await answer(ctx, ex, route.backend, response, dialect, request.stream, options, encoder)


def isJSONResponse(response: IResponse) -> bool:
    """
    @param response: an upstream response.
    @return: whether its C{Content-Type} is JSON (rather than an event
        stream).
    """
    values = response.headers.getRawHeaders(b"content-type") or [b""]
    return bool(values[0].split(b";")[0].strip().lower() == b"application/json")


async def answer(
    ctx: ProxyContext,
    ex: Exchange,
    backend: Backend,
    response: IResponse,
    dialect: Dialect,
    stream: bool,
    options: ReadOptions = ReadOptions(),
    encoder: Encoder | None = None,
) -> JSON | None:
    """
    Answer the client from the backend's (2xx) response, in its dialect.

    @param ctx: the shared context.
    @param ex: the exchange; C{ex.model} is the client's model name.
    @param backend: the backend that answered (its clock and idle timeout
        govern the read).
    @param response: the backend's response, body unread.
    @param dialect: the client's dialect.
    @param stream: whether the client asked for a stream.
    @param options: how to read the reply.
    @param encoder: the stream's encoder, if one was made already (one
        encoder per stream: the keep-alives written while the backend was
        silent and the reply are one stream); else a fresh one from
        C{dialect}.
    @return: the object to send, or C{None} after streaming.
    @raise ollama_proxy.protocol.errors.UpstreamError: if the backend's
        answer is unusable (before or after the stream began).
    """
    model = ex.model or ""
    ex.errors = dialect.errors
    if not stream or isJSONResponse(response):
        # A backend that ignores "stream": true (some gateways do) sends
        # one completion: the dialect writes it as a stream of its own.
        reply = ex.redactor.reply(readReply(
            await readJSON(response, backend.reactor, backend.idleTimeout),
            options.dropThinking, options.thinkTags, options.text,
        ), ex.clientKey())
        ex.noteUsage(reply.usage)
        if not stream:
            return dialect.reply(reply, model, ex.start, ctx.now())
        if encoder is None:
            encoder = dialect.streamEncoder(model, ex.start)
        ex.startEncoded(encoder)
        ex.write(encoder.whole(reply, ctx.now()))
        return None
    if encoder is None:
        encoder = dialect.streamEncoder(model, ex.start)
    pipeline = TranslatedStream(
        ChatStreamReader(ctx.now, options.dropThinking, options.thinkTags, options.text),
        encoder,
        ctx.maxLineLength,
        ex.redactor.events(ex.clientKey()),
    )
    ex.startEncoded(encoder)
    with streaming(ctx.metrics):
        collector = _debugWriter(ex, pipeline) if ctx.debug else _writer(ex, pipeline)
        await relayBody(ex, response, collector, backend.reactor, backend.idleTimeout)
        tail = pipeline.end()
        if ctx.debug:
            log.debug("translated {lines}", lines=ex.redactData(tail).decode("utf-8", "replace"))
        ex.write(tail)
    if pipeline.finished is not None:
        ex.noteFinish(pipeline.finished)
    return None


def _writer(ex: Exchange, pipeline: TranslatedStream) -> Callable[[bytes], None]:
    """
    A collector that translates each upstream read and writes the result,
    past the outbound byte filter when the pipeline's event redactor
    certified it (the common read: plain text deltas, see
    L{ollama_proxy.protocol.redact.EventRedactor.certifies}).
    """
    feed, write, writeRedacted = pipeline.feed, ex.write, ex.writeRedacted

    def collect(data: bytes) -> None:
        out = feed(data)
        if pipeline.redacted:
            writeRedacted(out)
        else:
            write(out)

    return collect


def _debugWriter(ex: Exchange, pipeline: TranslatedStream) -> Callable[[bytes], None]:
    """
    A collector that also logs each raw upstream read and what it became,
    both without the proxy's secrets.  The raw reads go through the relayed
    routes' guard (a key a model echoes token by token, or a tool call's
    arguments in pieces, lies in them between the JSON of its events) and a
    stream redactor of their own (a key split across two reads), as a
    relayed stream does.
    """
    guard = relayGuard(ex.redactor, ex.clientKey())
    raw = ex.redactor.stream(ex.clientKey())

    failed = False

    def shown(data: bytes) -> bytes:
        nonlocal failed
        if guard is not None and not failed:
            try:
                data = guard.feed(data)
            except (SSELineTooLong, StreamFailed):
                failed = True  # unguarded from here: sizes only
        if failed:
            return b"<%d bytes>" % len(data)
        return raw.feed(data) if raw is not None else data

    def collect(data: bytes) -> None:
        try:
            out = pipeline.feed(data)
        finally:
            log.debug("upstream chunk {raw!r}", raw=shown(data))
        if out:
            log.debug("translated {lines}", lines=ex.redactData(out).decode("utf-8", "replace"))
        ex.write(out)

    return collect

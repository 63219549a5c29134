"""
TODO
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.web.iweb import IResponse

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.chatbody import chatRequestToOpenAI, generateRequestToOpenAI
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.completions import (
    CompletionStreamTranslator,
    completionAsChat,
    completionRequestToOpenAI,
    wantsCompletion,
)
from ollama_proxy.protocol.embeddings import (
    dimensionsValue,
    embedInputs,
    embedRequestToOpenAI,
    embedResponse,
    emptyEmbedResponse,
    legacyPrompt,
    vectorsFromOpenAI,
)
from ollama_proxy.protocol.errors import (
    UpstreamHTTPError,
)
from ollama_proxy.protocol.flavors import withoutRejectedExtras
from ollama_proxy.protocol.ollama import NDJSONStream
from ollama_proxy.protocol.openai import StreamTranslator, responseFromOpenAI
from ollama_proxy.protocol.requests import (
    JSON,
    Kind,
    requireModel,
    streamFlag,
    thinkValue,
)
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.body import readJSON
from ollama_proxy.upstream.routing import Route, applyExtra, applyOverride
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.observe import streaming
from ollama_proxy.web.relay import relayBody


class Version(ProxyResource):
    """
    C{GET /api/version}: a dotted version clients accept.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        return {"version": self.ctx.version}


def loadResponse(model: str, kind: Kind, unload: bool, nowNs: int) -> JSON:
    """
    Ollama's reply to a request with nothing to generate (it loads or unloads
    the model); clients use it as a warm-up and rely on C{done_reason}.

    @param model: the client's model name.
    @param kind: C{"chat"} or C{"generate"}.
    @param unload: whether C{keep_alive} was 0.
    @param nowNs: the timestamp.
    @return: the C{done: true} object.
    """
    result: JSON = {"model": model, "created_at": formatTimestamp(nowNs)}
    if kind == "chat":
        result["message"] = {"role": "assistant", "content": ""}
    else:
        result["response"] = ""
    result["done"] = True
    result["done_reason"] = "unload" if unload else "load"
    return result


def isJSONResponse(response: Any) -> bool:
    """
    @param response: an upstream response.
    @return: whether its C{Content-Type} is JSON (rather than an event
        stream).
    """
    values = response.headers.getRawHeaders(b"content-type") or [b""]
    return bool(values[0].split(b";")[0].strip().lower() == b"application/json")


class Completion(ProxyResource):
    """
    C{POST /api/chat} and C{POST /api/generate}: translated to
    C{/v1/chat/completions}, streamed back as NDJSON by default.
    """

    log = Logger()

    def __init__(self, ctx: ProxyContext, kind: Kind) -> None:
        super().__init__(ctx)
        self.kind = kind

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        stream = streamFlag(body)
        think = thinkValue(body)
        route = await self.route(ex, model)
        body = applyOverride(body, route.override)
        backendId = route.modelId
        flavor = route.backend.flavor
        if self.kind == "chat":
            if not body.get("messages"):
                return loadResponse(model, "chat", body.get("keep_alive") == 0, self.ctx.now())
            upstreamBody = chatRequestToOpenAI(body, backendId, stream, flavor)
        else:
            if not body.get("prompt") and not body.get("images"):
                return loadResponse(
                    model, "generate", body.get("keep_alive") == 0, self.ctx.now()
                )
            if wantsCompletion(body):
                return await self._textCompletion(ex, body, model, route, stream)
            upstreamBody = generateRequestToOpenAI(body, backendId, stream, flavor)
        applyExtra(upstreamBody, route.override)
        if self.ctx.debug:
            self.log.debug("upstream request {body}", body=codec.dumps(upstreamBody).decode())
        response = await self._post(route.backend, "chat/completions", upstreamBody)
        if not stream:
            completion = await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            result = responseFromOpenAI(
                completion, model, self.kind, ex.start, self.ctx.now(), think is False
            )
            ex.noteFinal(result)
            return result
        if isJSONResponse(response):
            # A backend that ignores "stream": true (some gateways do) sends
            # one chat.completion; it becomes a single done:true line.
            completion = await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            result = responseFromOpenAI(
                completion, model, self.kind, ex.start, self.ctx.now(), think is False
            )
            ex.noteFinal(result)
            ex.startStream()
            ex.write(codec.dumpLine(result))
            return None
        with streaming(self.ctx.metrics):
            await self._stream(ex, response, model, think)
        return None

    async def _stream(self, ex: Exchange, response: Any, model: str, think: Any) -> None:
        """
        Relay a streamed chat completion as NDJSON.

        @param ex: the exchange.
        @param response: the upstream response, body unread.
        @param model: the client's model name.
        @param think: the client's C{think} value.
        """
        translator = StreamTranslator(
            model, self.kind, ex.start, self.ctx.now, dropThinking=think is False
        )
        pipeline = NDJSONStream(translator, self.ctx.maxLineLength)
        ex.startStream()
        if self.ctx.debug:
            await relayBody(
                ex, response, self._debugWriter(ex, pipeline), self.ctx.clock, self.ctx.idleTimeout
            )
        else:
            await relayBody(
                ex, response, lambda data: ex.write(pipeline.feed(data)), self.ctx.clock, self.ctx.idleTimeout
            )
        tail = pipeline.end()
        if self.ctx.debug:
            self.log.debug("translated {lines}", lines=tail.decode("utf-8", "replace"))
        ex.write(tail)
        noteStreamEnd(ex, tail)

    async def _post(self, backend: Backend, path: str, upstreamBody: JSON) -> IResponse:
        """
        POST to the backend; if it refuses the sampling extras by name, once
        more without them (see L{withoutRejectedExtras}).

        @param backend: the routed backend.
        @param path: the API path below C{/v1}.
        @param upstreamBody: the translated request.
        @return: a 2xx response, body unread.
        @raise UpstreamHTTPError: for any other non-2xx answer.
        """
        try:
            return await backend.postJSON(path, upstreamBody)
        except UpstreamHTTPError as e:
            retryBody = withoutRejectedExtras(upstreamBody, e.status, e.message)
            if retryBody is None:
                raise
            self.log.info(
                "backend rejected sampling extras ({error}); retrying without them",
                error=e.message,
            )
            return await backend.postJSON(path, retryBody)

    async def _textCompletion(
        self, ex: Exchange, body: JSON, model: str, route: Route, stream: bool
    ) -> JSON | None:
        """
        C{/api/generate} with C{raw} or C{suffix}: sent to C{/v1/completions}.

        A backend without that route (404/405/501) gets a raw prompt as a
        one-turn chat instead; a C{suffix} cannot be expressed as a chat, so
        then the backend's error is returned.

        @return: the generate object, or C{None} after streaming.
        """
        backend = route.backend
        backendId = route.modelId
        flavor = backend.flavor
        upstreamBody = applyExtra(
            completionRequestToOpenAI(body, backendId, stream, flavor), route.override
        )
        if self.ctx.debug:
            self.log.debug("upstream request {body}", body=codec.dumps(upstreamBody).decode())
        thinkTags = False  # raw text and code: a leading <think> is the user's
        try:
            response = await self._post(backend, "completions", upstreamBody)
        except UpstreamHTTPError as e:
            if e.status not in (404, 405, 501) or body.get("suffix"):
                raise
            self.log.info(
                "backend refused /v1/completions ({status}); sending the raw prompt as a chat",
                status=e.status,
            )
            chatBody = {k: v for k, v in body.items() if k != "raw"}
            response = await self._post(
                backend,
                "chat/completions",
                applyExtra(
                    generateRequestToOpenAI(chatBody, backendId, stream, flavor), route.override
                ),
            )
            translator = StreamTranslator(model, "generate", ex.start, self.ctx.now)
            thinkTags = True
        else:
            translator = CompletionStreamTranslator(model, ex.start, self.ctx.now)
        if not stream:
            completion = completionAsChat(
                await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            )
            result = responseFromOpenAI(
                completion, model, "generate", ex.start, self.ctx.now(), thinkTags=thinkTags
            )
            ex.noteFinal(result)
            return result
        pipeline = NDJSONStream(translator, self.ctx.maxLineLength)
        ex.startStream()
        with streaming(self.ctx.metrics):
            await relayBody(
                ex, response, lambda data: ex.write(pipeline.feed(data)), self.ctx.clock, self.ctx.idleTimeout
            )
            tail = pipeline.end()
            ex.write(tail)
        noteStreamEnd(ex, tail)
        return None

    def _debugWriter(self, ex: Exchange, pipeline: NDJSONStream) -> Callable[[bytes], None]:
        """
        A collector that logs each raw upstream read and what it became.
        """

        def write(data: bytes) -> None:
            self.log.debug("upstream chunk {raw!r}", raw=data)
            out = pipeline.feed(data)
            if out:
                self.log.debug("translated {lines}", lines=out.decode("utf-8", "replace"))
            ex.write(out)

        return write


def noteStreamEnd(ex: Exchange, tail: bytes) -> None:
    """
    Take the token counts and the time to first token from the last NDJSON
    line of a stream (the C{done: true} object).  The proxy measures prompt
    evaluation as the time to the first token (see
    L{ollama_proxy.translate.metrics}), so C{prompt_eval_duration} is it.

    @param ex: the exchange.
    @param tail: the stream's last bytes, ending with that line.
    """
    try:
        final = codec.loads(tail.rstrip(b"\n").rpartition(b"\n")[2])
    except codec.JSONDecodeError:
        return
    ex.noteFinal(final)
    if isinstance(final, dict) and isinstance(final.get("prompt_eval_duration"), int):
        ex.firstToken = final["prompt_eval_duration"]


class Embed(ProxyResource):
    """
    C{POST /api/embed}: batch embeddings through C{/v1/embeddings}.
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        inputs = embedInputs(body)
        dimensions = dimensionsValue(body)
        if not inputs:
            return emptyEmbedResponse(model)
        route = await self.route(ex, model)
        response = await route.backend.postJSON(
            "embeddings", embedRequestToOpenAI(route.modelId, inputs, dimensions)
        )
        vectors, tokens = vectorsFromOpenAI(
            await readJSON(response, self.ctx.clock, self.ctx.idleTimeout), len(inputs)
        )
        result = embedResponse(model, vectors, tokens, dimensions, ex.start, self.ctx.now())
        ex.noteFinal(result)
        return result


class LegacyEmbeddings(ProxyResource):
    """
    C{POST /api/embeddings}: one C{prompt}, one C{embedding}, as the backend
    computed it (Ollama does not normalise on this route).
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        prompt = legacyPrompt(body)
        if not prompt:
            return {"embedding": []}
        route = await self.route(ex, model)
        response = await route.backend.postJSON(
            "embeddings", embedRequestToOpenAI(route.modelId, [prompt], None)
        )
        [vector], _ = vectorsFromOpenAI(
            await readJSON(response, self.ctx.clock, self.ctx.idleTimeout), 1
        )
        return {"embedding": vector}

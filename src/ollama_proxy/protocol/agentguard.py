# -*- test-case-name: tests.protocol.test_agentguard -*-
"""
Secrets out of a relayed Anthropic Messages or OpenAI Responses stream's
texts, across events.

A backend configured C{native = ["messages", "responses"]} gets the coding
agents' requests as they are, and its SSE answer goes back without the hub
(L{ollama_proxy.web.generation.relayNative}).  The client joins the texts
of its delta events (Anthropic's C{content_block_delta}: C{text},
C{thinking}, a tool's C{partial_json}; Responses' C{response.*.delta}: the
output text, reasoning, refusal, a function call's arguments), so a key
split over them reaches it however each event alone is filtered.

L{AgentGuard} is L{ollama_proxy.protocol.relayguard.RelayGuard} for these
shapes: the same split into whole events, the same pass for a clean read,
one L{ollama_proxy.protocol.redact.TextRedactor} per text, and a held tail
released into the next delta of its text or, in a delta event of its own
(the ids of the text's last delta), before the event that ends the text
(Anthropic's C{content_block_stop}, C{message_delta}, C{message_stop}, an
C{error}; the Responses C{.done} of that text or its output item, the
response's end, an C{error}) or at the body's end.
"""

from __future__ import annotations

from typing import Any, Iterable

from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.protocol.relayguard import (Key, RelayGuard, decodeLenient, dumpLenient, endHeld,
                                              eventData, rewriteEvent)

ANTHROPIC_TEXTS = ("text", "thinking", "partial_json")
"""The texts of an Anthropic C{content_block_delta}'s C{delta} a client joins."""

RESPONSES_DELTAS = frozenset({
    "response.output_text.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
})
"""The Responses events whose C{delta} a client joins."""

_ANTHROPIC_ENDS = frozenset({"message_delta", "message_stop", "error"})
_RESPONSES_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
_IDS = ("item_id", "output_index", "content_index", "summary_index")


def agentGuard(redactor: Redactor, extra: Iterable[str | None] = ()) -> AgentGuard | None:
    """
    @param redactor: the proxy's secrets.
    @param extra: per-request secrets (the client's key).
    @return: a guard for one relayed agent stream, or C{None} when there is
        no secret to look for.
    """
    secrets = redactor.all(extra)
    return AgentGuard(secrets, redactor._escaped(secrets)[1]) if secrets else None


def _int(value: Any) -> int:
    return value if type(value) is int else -1


class AgentGuard(RelayGuard):
    """
    A relayed Anthropic or Responses stream's body in, the same body out
    with every secret split across delta events replaced.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What a released tail's own delta event looks like, per text.
        self._templates: dict[Key, tuple[bytes, dict[str, Any]]] = {}
        # How many events the guard added to a Responses stream so far: a
        # released tail's event takes the next sequence number and every
        # later event's number moves up by one, so they stay one apart and
        # unique, as the Responses API promises.
        self._shift = 0
        self._lastSequence = -1

    def _clean(self, data: bytes) -> bool:
        """
        Once an event was added, no read is clean: every later sequence
        number moves (see L{_event}).
        """
        return not self._shift and super()._clean(data)

    def _event(self, raw: bytes) -> bytes:
        data = eventData(raw)
        if data is None:
            return raw
        if not self._held and self._clean(data):
            return raw
        obj = decodeLenient(data)
        if not isinstance(obj, dict):
            return raw
        sequence = obj.get("sequence_number")
        if type(sequence) is int:
            if self._shift:
                obj["sequence_number"] = sequence = sequence + self._shift
                raw = rewriteEvent(raw, dumpLenient(obj))
            self._lastSequence = sequence
        kind = obj.get("type")
        if kind == "content_block_delta" and isinstance(obj.get("delta"), dict):
            return self._delta(raw, obj, obj["delta"], ANTHROPIC_TEXTS, _int(obj.get("index")), -1,
                               lambda field: {"type": kind, "index": obj.get("index"),
                                              "delta": {"type": obj["delta"].get("type"), field: ""}})
        if kind in RESPONSES_DELTAS:
            inner = _int(obj.get("content_index", obj.get("summary_index")))
            return self._delta(raw, obj, obj, ("delta",), _int(obj.get("output_index")), inner,
                               lambda field: {"type": kind, **{k: obj[k] for k in _IDS if k in obj},
                                              "delta": ""})
        if not self._held or not isinstance(kind, str):
            return raw
        if kind == "content_block_stop":
            index = _int(obj.get("index"))
            return self._releaseWhere(lambda key: key[0] == index, None)[0] + raw
        if kind.startswith("response.") and kind.endswith(".done"):
            output = _int(obj.get("output_index"))
            inner = _int(obj.get("content_index", obj.get("summary_index")))
            delta = kind[: -len(".done")] + ".delta"
            whole = kind == "response.output_item.done"
            return self._before(raw, obj, lambda key: key[0] == output and (
                whole or (key[1] == delta and key[2] == inner)))
        if kind in _ANTHROPIC_ENDS or kind in _RESPONSES_ENDS:
            return self._before(raw, obj, lambda key: True)
        return raw

    def _before(self, raw: bytes, obj: dict[str, Any], chosen: Any) -> bytes:
        """
        The held tails of the texts an event ends, released before it.

        @param raw: the ending event, as it goes out.
        @param obj: its decoded object.
        @param chosen: which held texts it ends.
        @return: the released delta events, then the ending event (its
            C{sequence_number}, if any, moved past theirs).
        """
        sequence = obj.get("sequence_number")
        released, count = self._releaseWhere(chosen, sequence if type(sequence) is int else None)
        if count and type(sequence) is int:
            self._shift += count
            obj["sequence_number"] = self._lastSequence = sequence + count
            raw = rewriteEvent(raw, dumpLenient(obj))
        return released + raw

    def _delta(self, raw: bytes, obj: dict[str, Any], holder: dict[str, Any], fields: tuple[str, ...],
               outer: int, inner: int, template: Any) -> bytes:
        """
        Feed one delta event's texts.

        @param holder: the object the texts are in.
        @param template: makes the event a released tail of C{field} goes
            out in (its text empty).
        @return: the event, as it came or written again.
        """
        changed = False
        kind = str(obj.get("type"))
        for field in fields:
            value = holder.get(field)
            if not isinstance(value, str):
                continue
            key = (outer, kind if field == "delta" else field, inner)
            new = self._text(key, value)
            if key in self._held:
                self._templates[key] = (kind.encode("utf-8", "replace"), template(field))
            else:
                self._templates.pop(key, None)  # as bounded as what is held
            if new is not value:
                holder[field] = new
                changed = True
        return rewriteEvent(raw, dumpLenient(obj)) if changed else raw

    def _releaseWhere(self, chosen: Any, sequence: int | None) -> tuple[bytes, int]:
        """
        @param chosen: which held texts end here.
        @param sequence: the ending event's C{sequence_number}, if any: the
            released Responses events take it and the numbers after it
            (they come just before that event, which moves up).
        @return: their tails, one delta event each, and how many.
        """
        out: list[bytes] = []
        keys = [k for k in self._held if chosen(k)]
        tails = endHeld(self._held, keys)
        for key in keys:
            tail = tails.get(key)
            name, event = self._templates.pop(key, (b"", {}))
            if not tail or not name:
                continue
            field = "delta" if key[1].startswith("response.") else key[1]
            if field == "delta":
                event["delta"] = tail
                if sequence is not None:
                    event["sequence_number"] = sequence + len(out)
            else:
                event["delta"][field] = tail
            out.append(b"event: " + name + b"\ndata: " + dumpLenient(event) + b"\n\n")
        return b"".join(out), len(out)

    def _release(self) -> bytes:
        """
        @return: every held tail, each in a delta event of its text.
        """
        if not self._held:
            return b""
        last = self._lastSequence
        released, count = self._releaseWhere(lambda key: True, last + 1 if last >= 0 else None)
        if last >= 0:
            self._shift += count
            self._lastSequence += count
        return released

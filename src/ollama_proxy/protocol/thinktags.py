# -*- test-case-name: tests.protocol.test_thinktags -*-
"""
Inline C{<think>...</think>} at the start of a reply's content, split into
thinking and content as Ollama's own parser does, for models whose serving
stack has no separate reasoning channel.
"""

from __future__ import annotations

from dataclasses import dataclass

_OPEN_TAG = "<think>"

_CLOSE_TAG = "</think>"
_SEEKING, _OPENED, _THINKING, _CLOSED, _PASSING = range(5)


@dataclass(slots=True)
class ThinkTagSplitter:
    """
    Split inline C{<think>...</think>} at the start of a reply's content into
    thinking and content, as Ollama's own parser does for models whose
    template has no separate reasoning channel (some vLLM and Fireworks
    set-ups stream DeepSeek-R1 and Qwen3 that way).

    Stateful, because the tags arrive in arbitrary pieces (C{"<thi"},
    C{"nk>"}): text that might still turn into a tag is held back until it
    is decided.  Whitespace around the tags is trimmed like Ollama does, so
    the result does not depend on how the text was split.  Only a tag at the
    very start (after whitespace) counts; once real content has been seen
    the splitter only passes text through, at the cost of one comparison per
    delta.

    A dataclass: making one stores three fields and runs nothing of this
    module (the reader makes one per stream, and asks it only per delta).

    @ivar passing: whether the decision is made and all further text is
        content (an attribute, read per delta without a call).
    """

    _state: int = _SEEKING
    _held: str = ""
    passing: bool = False

    def feed(self, text: str) -> tuple[str, str]:
        """
        @param text: the next piece of content.
        @return: C{(thinking, content)} that can be released now.
        """
        state = self._state
        if state == _PASSING:
            return "", text
        held = self._held + text
        if state == _SEEKING:
            stripped = held.lstrip()
            if stripped.startswith(_OPEN_TAG):
                held = stripped[len(_OPEN_TAG) :]
                state = _OPENED
            elif _OPEN_TAG.startswith(stripped):
                # Only whitespace, or a prefix of the tag: undecided.
                self._held = held
                return "", ""
            else:
                self._state = _PASSING
                self.passing = True
                self._held = ""
                return "", held
        if state == _OPENED:
            held = held.lstrip()
            if not held:
                self._state = _OPENED
                self._held = ""
                return "", ""
            state = _THINKING
        if state == _THINKING:
            end = held.find(_CLOSE_TAG)
            if end < 0:
                cut = _undecidedTail(held)
                self._state = _THINKING
                self._held = held[cut:]
                return held[:cut], ""
            thinking = held[:end].rstrip()
            held = held[end + len(_CLOSE_TAG) :]
            state = _CLOSED
        else:
            thinking = ""
        content = held.lstrip()
        self._held = ""
        if content:
            self._state = _PASSING
            self.passing = True
        else:
            self._state = _CLOSED
        return thinking, content

    def flush(self) -> tuple[str, str]:
        """
        The reply ended: release what was held back.  An unclosed think
        block (the model hit its token limit while thinking) is thinking.

        @return: C{(thinking, content)}.
        """
        held, state = self._held, self._state
        self._held = ""
        self._state = _PASSING
        self.passing = True
        if state == _SEEKING:
            return "", held
        if state == _THINKING:
            return held.rstrip(), ""
        return "", ""


def _undecidedTail(text: str) -> int:
    """
    Where the part of thinking text that might belong to C{</think>} begins:
    a trailing prefix of the tag and the whitespace before it.

    @param text: thinking text without a complete closing tag.
    @return: the index from which to hold C{text} back.
    """
    cut = len(text)
    for size in range(min(len(_CLOSE_TAG) - 1, len(text)), 0, -1):
        if text.endswith(_CLOSE_TAG[:size]):
            cut -= size
            break
    while cut and text[cut - 1].isspace():
        cut -= 1
    return cut


def splitThinkTags(text: str) -> tuple[str, str]:
    """
    Split a whole reply's leading C{<think>} block (see L{ThinkTagSplitter}).

    @param text: the complete content.
    @return: C{(thinking, content)}.
    """
    if _OPEN_TAG not in text:
        # Only a leading <think> changes anything (the splitter passes any
        # other text on whole, whitespace included): the usual reply is
        # one search, no splitter.
        return "", text
    splitter = ThinkTagSplitter()
    thinking, content = splitter.feed(text)
    moreThinking, moreContent = splitter.flush()
    return thinking + moreThinking, content + moreContent

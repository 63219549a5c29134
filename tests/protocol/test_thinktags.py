"""
Splitting a leading C{<think>} block, at every split of the text.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.thinktags import ThinkTagSplitter, splitThinkTags


class ThinkTagSplitterTests(SynchronousTestCase):
    """
    L{ThinkTagSplitter} on its own.
    """

    def test_table(self) -> None:
        """
        Only a tag at the very start (after whitespace) opens a think block;
        whitespace around the tags is trimmed like Ollama does; everything
        after the block, including later tags, is content.
        """
        cases = [
            ("<think>a</think>b", ("a", "b")),
            ("  \n<think>\n a \n</think>\n\n b ", ("a", "b ")),
            ("<think></think>answer", ("", "answer")),
            ("plain text", ("", "plain text")),
            ("  plain", ("", "  plain")),
            ("x <think>a</think>", ("", "x <think>a</think>")),
            ("<thinking>a</thinking>", ("", "<thinking>a</thinking>")),
            ("<think>a</think>b</think>", ("a", "b</think>")),
            ("<think>a < b </thin k></think>c", ("a < b </thin k>", "c")),
            ("<think>unclosed", ("unclosed", "")),
            ("", ("", "")),
            ("   ", ("", "   ")),
        ]
        for text, expected in cases:
            self.assertEqual(splitThinkTags(text), expected, text)

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["<think>a b</think>\n\nc", " <think>\n\nx</think></think>y", "no tags <think>",
                         "<think>\u00e9 < /think </thi</think> \u00e9", "<think>never closed  "]),
        st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    )
    def test_anyPartition(self, text: str, cuts: list[int]) -> None:
        """
        However the text is cut into deltas, the concatenated thinking and
        content are those of the whole text.
        """
        points = sorted({min(c, len(text)) for c in cuts})
        parts = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
        splitter = ThinkTagSplitter()
        thinking = content = ""
        for part in parts:
            t, c = splitter.feed(part)
            thinking += t
            content += c
        t, c = splitter.flush()
        self.assertEqual((thinking + t, content + c), splitThinkTags(text))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(["<think>", "</think>", "<", "<th", "think>", " ", "\n", "a", "\u00e9"]),
                    max_size=8).map("".join))
    def test_wholeIsTheSplitters(self, text: str) -> None:
        """
        L{splitThinkTags} (which answers a text without C{<think>} in one
        search) gives what the splitter gives for the whole text, whether
        the text holds a tag or not.
        """
        splitter = ThinkTagSplitter()
        thinking, content = splitter.feed(text)
        moreThinking, moreContent = splitter.flush()
        self.assertEqual(splitThinkTags(text), (thinking + moreThinking, content + moreContent))

    def test_passing(self) -> None:
        """
        Once real content is seen the splitter says so, so the stream stops
        consulting it.
        """
        splitter = ThinkTagSplitter()
        splitter.feed("<th")
        self.assertFalse(splitter.passing)
        splitter.feed("ere")
        self.assertTrue(splitter.passing)
        self.assertEqual(splitter.feed("<think>"), ("", "<think>"))

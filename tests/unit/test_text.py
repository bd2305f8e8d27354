"""Token bytes → client text: whole UTF-8 characters only (WO-SSE-1), stop strings never shown (WO-EXEC-6).

Pieces are split at every possible position, because the model's tokens may
cut a character or a stop string anywhere.
"""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

import pytest

from worker_orcd.engine.text import StopMatcher, Utf8Assembler

T = TypeVar("T", str, bytes)


def splits(whole: T) -> Iterator[list[T]]:
    """Every way of cutting `whole` into consecutive non-empty pieces."""
    n = len(whole)
    for mask in range(1 << max(0, n - 1)):
        pieces, start = [], 0
        for cut in range(1, n):
            if mask & (1 << (cut - 1)):
                pieces.append(whole[start:cut])
                start = cut
        pieces.append(whole[start:])
        yield pieces


def complete_prefix(data: bytes) -> str:
    """The text of the longest prefix of `data` that ends on a character boundary."""
    for end in range(len(data), -1, -1):
        try:
            return data[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


@pytest.mark.parametrize(
    "text",
    [
        "a\u00e9\u4e2d\U0001f389",  # 1, 2, 3 and 4 bytes
        "\u4f60\u597d\u4e16\u754c",  # Chinese
        "\U0001f600\U0001f469\u200d\U0001f4bb",  # emoji, with a zero-width joiner
        "\u00e9\u00e9\u00e9\u00e9\u00e9",
    ],
)
def test_utf8_every_split(text):
    data = text.encode("utf-8")
    for pieces in splits(data):
        feed = Utf8Assembler().feed
        out, fed = [], b""
        for piece in pieces:
            fed += piece
            chunk = feed(piece)
            assert "\ufffd" not in chunk
            out.append(chunk)
            # Released as soon as a character is whole, and not before.
            assert "".join(out) == complete_prefix(fed), pieces
        assert "".join(out) == text


def test_utf8_single_bytes_of_a_character_yield_nothing_until_whole():
    feed = Utf8Assembler().feed
    assert [feed(bytes([b])) for b in "\U0001f389".encode()] == ["", "", "", "\U0001f389"]


def test_utf8_invalid_bytes_are_replaced_not_held():
    # Bytes that can never become a character must not block the stream.
    feed = Utf8Assembler().feed
    assert feed(b"\xff") == "\ufffd"
    assert feed(b"ok") == "ok"
    feed = Utf8Assembler().feed
    assert feed(b"\xe4\xbd") == ""
    assert feed(b"(") == "\ufffd("


# -- stop strings --------------------------------------------------------------------------


def expected_release(prefix: str, stops: Sequence[str]) -> tuple[str, bool]:
    """What may have been shown after `prefix`: up to the first stop, else all but a possible stop start."""
    found = [prefix.find(s) for s in stops if s in prefix]
    if found:
        return prefix[: min(found)], True
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(prefix)), 0, -1):
            if prefix.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return prefix[: len(prefix) - keep], False


def run_matcher(pieces: Sequence[str], stops: Sequence[str]) -> tuple[str, bool]:
    matcher = StopMatcher(tuple(stops))
    shown, fed = "", ""
    for piece in pieces:
        fed += piece
        shown += matcher.feed(piece)
        assert (shown, matcher.stopped) == expected_release(fed, stops), (pieces, stops)
        if matcher.stopped:
            return shown, True  # the loop stops generating here
    return shown + matcher.flush(), False


@pytest.mark.parametrize(
    "text, stops, shown, stopped",
    [
        ("ab<|END|>cd", ["<|END|>"], "ab", True),
        ("<|END|>", ["<|END|>"], "", True),
        ("x<|EN<|END|>", ["<|END|>"], "x<|EN", True),
        ("<<<|END|", ["<|END|>"], "<<<|END|", False),  # a stop start that never completes is shown at the end
        ("a\n\nb<|END|>", ["<|END|>", "\n\n"], "a", True),
        ("Paris.\nDone", ["Paris"], "", True),
        ("aaab", ["aab"], "a", True),  # the match may start inside held text
    ],
)
def test_stop_every_split(text, stops, shown, stopped):
    for pieces in splits(text):
        assert run_matcher(pieces, stops) == (shown, stopped), pieces


def test_stop_in_multibyte_text_every_byte_split():
    # The assembler feeds the matcher: a stop made of multi-byte characters, cut anywhere.
    text = "\u4f60<\u505c>\u597d"
    data = text.encode("utf-8")
    for pieces in splits(data):
        feed = Utf8Assembler().feed
        matcher = StopMatcher(("<\u505c>",))
        shown = ""
        for piece in pieces:
            shown += matcher.feed(feed(piece))
            assert "\ufffd" not in shown and "<" not in shown
            if matcher.stopped:
                break
        assert matcher.stopped and shown == "\u4f60", pieces


def test_no_stops_passes_everything_through():
    matcher = StopMatcher(())
    assert matcher.feed("<|END|>") == "<|END|>"
    assert not matcher.stopped and matcher.flush() == ""


def test_empty_stop_strings_are_ignored():
    matcher = StopMatcher(("",))
    assert matcher.feed("abc") == "abc" and not matcher.stopped


def test_flush_releases_held_text_once():
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("abc ST") == "abc "
    assert matcher.flush() == "ST"
    assert matcher.flush() == ""

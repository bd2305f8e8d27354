"""Turning token bytes into the text a client may see.

Byte-level BPE tokens can end in the middle of a UTF-8 character; the bytes wait
until the character is whole, so every `token` event carries valid UTF-8.
Stop strings may span tokens; text that could still become a stop string waits
until it cannot, and the stop string itself is never shown.
"""

from __future__ import annotations

import codecs


class Utf8Assembler:
    __slots__ = ("_decode",)

    def __init__(self) -> None:
        # errors="replace" only matters for bytes that can never become valid
        # UTF-8; an incomplete tail is held back, not replaced.
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    def feed(self, piece: bytes) -> str:
        return self._decode(piece)


class StopMatcher:
    """Finds the first stop string in a stream of text pieces."""

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of the text that is safe to show now."""
        if not self._stops:
            return text
        held = self._held + text
        first = -1
        for stop in self._stops:
            at = held.find(stop)
            if at != -1 and (first == -1 or at < first):
                first = at
        if first != -1:
            self.stopped = True
            self._held = ""
            return held[:first]
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """What was held back when generation ends without a stop."""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

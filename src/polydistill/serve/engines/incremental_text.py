"""Incremental detokenization with stop strings, for streaming text one token at a time.

Byte-level tokenizers split characters across tokens, so text that ends in an incomplete
character (decoded as U+FFFD) is held back until the next token completes it; text that could
be the start of a stop string is held back until it is known not to be one.
"""

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class IncrementalText:
    """Turns generated token ids into text deltas, truncating at the first stop string."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._released = 0
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the text that is now final (empty while held back or stopped)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        stop_at = self._first_stop(text)
        if stop_at is not None:
            self.stopped = True
            return self._release(text, stop_at)
        safe_end = len(text) - self._held_suffix(text)
        return self._release(text, safe_end)

    def flush(self) -> str:
        """The text still held back, at the end of the sequence."""
        if self.stopped or not self._ids:
            return ""
        text = self._decode(self._ids)
        return self._release(text, len(text))

    def _release(self, text: str, end: int) -> str:
        if end <= self._released:
            return ""
        delta = text[self._released : end]
        self._released = end
        return delta

    def _first_stop(self, text: str) -> int | None:
        longest = max((len(s) for s in self._stop), default=0)
        search_from = max(0, self._released - longest + 1)
        found = [i for s in self._stop if (i := text.find(s, search_from)) >= 0]
        return min(found) if found else None

    def _held_suffix(self, text: str) -> int:
        held = 0
        if text.endswith(REPLACEMENT):
            held = len(text) - len(text.rstrip(REPLACEMENT))
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    held = max(held, size)
                    break
        return held

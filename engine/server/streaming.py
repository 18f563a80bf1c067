"""Incremental text for streaming: what can be sent of a growing output so far.

Re-decoding the whole output each step is what makes multi-byte characters and merged
tokens come out right; what was already sent is never taken back, so the text is held
back while it ends in an incomplete character, or in something that may yet become a
stop string (the engine cuts the final text before a stop string).
"""

from __future__ import annotations


class TextDeltas:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.sent = ""

    def delta(self, text: str, final: bool) -> str:
        """The new part of ``text`` (the whole output so far) that is safe to send."""
        safe = text if final else text[: len(text) - self._hold(text)]
        if not safe.startswith(self.sent):  # the final text was cut before a stop string
            safe = self.sent if final else safe
        new = safe[len(self.sent):]
        self.sent += new
        return new

    def _hold(self, text: str) -> int:
        hold = 1 if text.endswith("\ufffd") else 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return hold

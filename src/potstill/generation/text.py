"""From token ids to text: one row's incremental text with stop strings, and the text and
bytes of single tokens for the logprobs of a response."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

REPLACEMENT = "\ufffd"  # what a decoder shows for bytes that are not yet a whole character


class TextStream:
    """The text of one generated row, released piece by piece as tokens arrive.

    Text is released only when it is final: never a trailing partial UTF-8 character
    (decoded as U+FFFD until its last byte arrives) and never a tail that could still
    become a stop string. When a stop string appears the text is cut where it starts,
    the stop string excluded, and `stopped` turns True. The pieces `push` and `finish`
    return add up to `text`.

    ``offsets[i]`` is where token ``i``'s text starts in the row's text: where the text
    before it and the text with it part ways (so a token that completes a character
    started by earlier tokens is given that character). Offsets inside a trailing partial
    character may still move back as tokens arrive; those below `released` are final.

    >>> pieces = {1: "Hel", 2: "lo", 3: " wor", 4: "ld"}
    >>> stream = TextStream(lambda ids: "".join(pieces[i] for i in ids), stop=("lo w",))
    >>> stream.push(1), stream.push(2), stream.push(3), stream.stopped, stream.text
    ('He', 'l', '', True, 'Hel')
    >>> stream.offsets
    [0, 3, 5]
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._full = ""  # the decoded text of every token so far
        self._released = 0  # characters of text handed out so far
        self.offsets: list[int] = []
        self.stopped = False
        self._stop_at: int | None = None

    @property
    def text(self) -> str:
        """The row's text: all of it, or up to the first stop string once one appeared."""
        return self._full if self._stop_at is None else self._full[: self._stop_at]

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became final (maybe '')."""
        if self.stopped:
            raise RuntimeError("push after a stop string: the row has finished")
        before = self._full
        self._ids.append(token_id)
        self._full = self._decode(self._ids)
        offset = _common_prefix(before, self._full, len(before.rstrip(REPLACEMENT)))
        # Bytes of one character can decode to several U+FFFD until it is whole: the
        # tokens behind them start where the character does.
        for i in reversed(range(len(self.offsets))):
            if self.offsets[i] <= offset:
                break
            self.offsets[i] = offset
        self.offsets.append(offset)
        # A stop string can only be new if it ends in the new text, so search from there.
        longest = max((len(s) for s in self._stop), default=0)
        start = max(0, len(before.rstrip(REPLACEMENT)) - longest + 1)
        found = [i for i in (self._full.find(s, start) for s in self._stop) if i >= 0]
        if found:
            self._stop_at = min(found)
            self.stopped = True
            return self._release(self._stop_at)
        stable = self._full.rstrip(REPLACEMENT)
        return self._release(len(stable) - self._stop_prefix(stable))

    def finish(self) -> str:
        """The row ended (end token, length, cancelled): release what was held back."""
        return self._release(len(self.text))

    @property
    def released(self) -> int:
        """How many characters of `text` have been handed out."""
        return self._released

    def _release(self, upto: int) -> str:
        piece = self._full[self._released : upto] if upto > self._released else ""
        self._released = max(self._released, upto)
        return piece

    def _stop_prefix(self, text: str) -> int:
        """The length of the longest tail of ``text`` that begins some stop string."""
        best = 0
        for stop in self._stop:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


def _common_prefix(a: str, b: str, known: int) -> int:
    """The length of the common prefix of ``a`` and ``b``, whose first ``known``
    characters are taken to agree (earlier text does not change as tokens are added)."""
    end = min(len(a), len(b))
    i = min(known, end)
    while i < end and a[i] == b[i]:
        i += 1
    return i


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character each byte is written as, inverted."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class TokenText:
    """The text and raw bytes of single tokens, as the OpenAI logprobs formats show them.

    A token whose bytes are not whole UTF-8 characters on their own (a piece of an emoji)
    is shown as ``bytes:\\xe2\\x80`` (OpenAI's convention), so no two tokens share a
    name; its ``bytes`` are the raw bytes. Raw bytes are read from byte-level BPE pieces
    (GPT-2, Llama 3, SmolLM) and SentencePiece byte tokens (``<0xE2>``); for other
    tokenizers they are the UTF-8 of the decoded text.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._alphabet = _byte_level_alphabet()
        self.bytes_of = lru_cache(maxsize=None)(self._bytes_of)
        self.text_of = lru_cache(maxsize=None)(self._text_of)

    def _bytes_of(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if self._byte_level and piece and all(c in self._alphabet for c in piece):
            return bytes(self._alphabet[c] for c in piece)
        if match := _BYTE_TOKEN.fullmatch(piece or ""):
            return bytes([int(match.group(1), 16)])
        return self._tokenizer.decode([token_id]).encode()

    def _text_of(self, token_id: int) -> str:
        raw = self._bytes_of(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

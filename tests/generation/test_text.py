"""Incremental text with stop strings, and the names and bytes of single tokens."""

from __future__ import annotations

from potstill.generation.text import TextStream, TokenText
from tests.conftest import make_tokenizer


def stream_all(tokenizer, ids: list[int], stop: tuple[str, ...]) -> tuple[list[str], TextStream]:
    """Push ``ids`` until a stop string; the released pieces (finish's last)."""
    stream = TextStream(lambda t: tokenizer.decode(t), stop)
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    return pieces, stream


def test_pieces_add_up_to_the_text_and_never_split_a_character():
    tokenizer = make_tokenizer()
    text = "To be — or not 🙂 to be"  # the dash and the emoji are several byte tokens each
    ids = tokenizer(text)["input_ids"]
    pieces, stream = stream_all(tokenizer, ids, stop=())
    assert "".join(pieces) == stream.text == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(stream.offsets) == len(ids)
    # Each offset is where the token's text starts; the emoji's bytes share one start.
    emoji = text.index("🙂")
    assert [o for o in stream.offsets if o == emoji]
    assert stream.offsets == sorted(stream.offsets)


def test_a_stop_string_across_tokens_is_cut_and_never_released():
    tokenizer = make_tokenizer()
    text = "Whether 'tis nobler in the mind to suffer"
    ids = tokenizer(text)["input_ids"]
    for stop in ("nobler in", "n the m", "r", "suffer"):
        pieces, stream = stream_all(tokenizer, ids, stop=(stop, "never there"))
        assert stream.stopped
        assert stream.text == text[: text.index(stop)]
        assert "".join(pieces) == stream.text


def test_a_tail_that_may_begin_a_stop_string_is_held_back_until_it_cannot():
    stream = TextStream(lambda ids: "".join({1: "ab", 2: "c", 3: "x"}[i] for i in ids), ("bcd",))
    assert stream.push(1) == "a"  # "b" may begin "bcd"
    assert stream.push(2) == ""  # "bc" still may
    assert stream.push(3) == "bcx"  # "bcx" cannot
    assert not stream.stopped


def test_token_names_are_unique_and_partial_bytes_are_named_by_their_bytes():
    tokenizer = make_tokenizer()
    names = TokenText(tokenizer)
    vocab = range(len(tokenizer))
    assert len({names.text_of(i) for i in vocab}) == len(tokenizer)
    lone_byte = tokenizer.convert_tokens_to_ids("Ã")  # byte 0xC3 on its own
    assert names.bytes_of(lone_byte) == b"\xc3"
    assert names.text_of(lone_byte) == "bytes:\\xc3"
    space_s = tokenizer.convert_tokens_to_ids("Ġs")
    assert names.text_of(space_s) == " s" and names.bytes_of(space_s) == b" s"

"""Stop strings of the server: fed whole or split anywhere, the text is cut at the same place."""

import pytest

from minicpmv_gguf.serve.textflow import StopFilter


def pieces_everywhere(text):
    yield [text]
    yield list(text)
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]


def run_stop(stops, parts):
    f = StopFilter(stops)
    return "".join(f.feed(p) for p in parts) + f.finish(), f.stopped


@pytest.mark.parametrize(
    "text,stops,want",
    [
        ("Hello world. END more", ("END",), ("Hello world. ", True)),
        ("a<|x|>b", ("<|x|>", "b"), ("a", True)),
        ("no stop here, EN", ("END",), ("no stop here, EN", False)),
        ("EEND", ("END",), ("E", True)),
        ("plain", (), ("plain", False)),
    ],
)
def test_stop_strings_cut_the_text_wherever_pieces_split(text, stops, want):
    for parts in pieces_everywhere(text):
        assert run_stop(stops, parts) == want, parts

"""Incremental text filters of the server: fed whole or split anywhere, they give the same text."""

import pytest

from minicpmv_gguf.serve.textflow import StopFilter, ThinkSplit, Trim


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


def run_split(thinking, parts):
    s = ThinkSplit(thinking)
    events = [e for p in parts for e in s.feed(p)] + s.finish()
    out = {"reasoning": "", "content": ""}
    for kind, text in events:
        out[kind] += text
    return out


@pytest.mark.parametrize(
    "thinking,text,want",
    [
        (True, "\nLet me look.\n</think>\n\nA red square. ", {"reasoning": "Let me look.", "content": "A red square."}),
        (True, "still thinking", {"reasoning": "still thinking", "content": ""}),
        (False, "\n\nA cat </think> sat.\n", {"reasoning": "", "content": "A cat </think> sat."}),
        (True, "a </thin", {"reasoning": "a </thin", "content": ""}),
    ],
)
def test_reasoning_and_answer_are_split_and_trimmed_as_whole_text_would_be(thinking, text, want):
    for parts in pieces_everywhere(text):
        assert run_split(thinking, parts) == want, parts


def test_trim_is_strip_streamed():
    for text in ["  a b  ", "\n\nx\n\n y \n", "   ", "z"]:
        for parts in pieces_everywhere(text):
            t = Trim()
            assert "".join(t.feed(p) for p in parts) == text.strip(), parts

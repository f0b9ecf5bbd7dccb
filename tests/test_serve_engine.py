"""The server engine against the chat runtime: the same tokens, and caches that skip what was seen."""

from __future__ import annotations

import pytest

from tests.runtime_cases import N_THREADS, QUESTION

N_TOKENS = 16


@pytest.fixture(scope="module")
def model(tiny_files):
    from minicpmv_gguf.runtime import open_model

    with open_model(tiny_files.lm, [tiny_files.mm16, tiny_files.mm4], threads=N_THREADS) as m:
        yield m


@pytest.fixture
def engine(model):
    from minicpmv_gguf.serve.engine import Engine

    e = Engine(model.lm, model.mmprojs, threads=N_THREADS, n_ctx=2048)
    yield e
    e.close()


def ask(engine, messages, pictures=(), mode=None, **kw):
    from minicpmv_gguf.runtime import GREEDY
    from minicpmv_gguf.serve.engine import Delta, Job

    job = Job(messages, tuple(pictures), mode, sampling=kw.pop("sampling", GREEDY), max_tokens=N_TOKENS, **kw)
    events = list(engine.run(job))
    text = "".join(e.text for e in events if isinstance(e, Delta)).strip()
    return text, events[-1]


def user(text, n_images=0):
    return {"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def runtime_answers(model, turns, detail=None):
    """What ChatSession (the runtime `run` uses) answers, turn by turn, greedy."""
    from minicpmv_gguf.runtime import GREEDY

    with model.chat(detail=detail, sampling=GREEDY, max_tokens=N_TOKENS) as chat:
        return [chat.send(text, images).text for text, images in turns]


@pytest.mark.parametrize("detail,mode", [(None, None), ("high", "4x")])
def test_one_image_turn_equals_the_runtime(model, engine, tiny_files, detail, mode):
    from minicpmv_gguf.runtime import load_image

    [want] = runtime_answers(model, [(QUESTION, [tiny_files.image_a])], detail)
    got, finish = ask(engine, [user(QUESTION, 1)], [load_image(tiny_files.image_a)], mode)
    assert got == want
    assert finish.usage.cached_tokens == 0 and finish.usage.images_encoded == 1 and finish.usage.image_tokens > 0


def test_resent_conversation_is_cached_and_answers_as_a_fresh_engine(model, engine, tiny_files):
    from minicpmv_gguf.runtime import load_image

    pics = [load_image(tiny_files.image_a), load_image(tiny_files.image_b)]
    first, _ = ask(engine, [user(QUESTION, 1)], pics[:1])
    history = [user(QUESTION, 1), {"role": "assistant", "content": first}, user("And this one?", 1)]
    want = runtime_answers(model, [(QUESTION, [tiny_files.image_a]), ("And this one?", [tiny_files.image_b])])
    got, finish = ask(engine, history, pics)
    assert [first, got] == want
    # Everything up to the first turn's generation prompt came from a snapshot; image a was not encoded again.
    assert finish.usage.cached_tokens > finish.usage.image_tokens // 2 and finish.usage.images_encoded == 1


def test_a_new_question_about_a_seen_image_skips_the_image(model, engine, tiny_files):
    from minicpmv_gguf.runtime import load_image
    from minicpmv_gguf.serve.engine import Engine

    ask(engine, [user(QUESTION, 1)], [load_image(tiny_files.image_a)])
    got, finish = ask(engine, [user("Describe the colours.", 1)], [load_image(tiny_files.image_a)])
    assert finish.usage.cached_tokens >= finish.usage.image_tokens and finish.usage.images_encoded == 0
    fresh = Engine(engine.lm, engine.mmprojs, threads=N_THREADS, n_ctx=2048)
    try:
        assert ask(fresh, [user("Describe the colours.", 1)], [load_image(tiny_files.image_a)])[0] == got
    finally:
        fresh.close()


def test_a_prompt_longer_than_the_context_is_refused(model, tiny_files):
    from minicpmv_gguf.errors import InputError
    from minicpmv_gguf.serve.engine import Engine

    small = Engine(model.lm, model.mmprojs, threads=N_THREADS, n_ctx=64)
    try:
        with pytest.raises(InputError, match=r"context holds \d+"):
            ask(small, [user("word " * 200)])
    finally:
        small.close()


def test_json_grammar_constrains_the_reply(engine):
    import json

    grammar = 'root ::= "{" space "\\"n\\"" space ":" space [0-9] [0-9]? space "}"\nspace ::= " "?'
    text, finish = ask(engine, [user("Give me a number as JSON.")], grammar=grammar)
    assert isinstance(json.loads(text)["n"], int) and finish.reason == "stop"


def test_a_reply_warmed_in_spare_time_leaves_only_the_new_question(model, engine, tiny_files):
    from minicpmv_gguf.runtime import load_image

    pics = [load_image(tiny_files.image_a)]
    first, _ = ask(engine, [user(QUESTION, 1)], pics)
    from minicpmv_gguf.runtime import GREEDY
    from minicpmv_gguf.serve.engine import Job

    added = engine.warm(Job([user(QUESTION, 1)], tuple(pics), None, sampling=GREEDY), first)
    assert added > 0
    history = [user(QUESTION, 1), {"role": "assistant", "content": first}, user("Why?")]
    got, finish = ask(engine, history, pics)
    question = len(engine.lm.tokenize("Why?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"))
    assert finish.usage.prompt_tokens - finish.usage.cached_tokens <= question
    assert [first, got] == runtime_answers(model, [(QUESTION, [tiny_files.image_a]), ("Why?", [])])


def test_embeddings_decode_exactly_as_libmtmd_decodes_them(model, tiny_files):
    # The server keeps embeddings, not libmtmd's chunks; evaluating them must give libmtmd's logits, every time.
    import numpy as np

    from minicpmv_gguf.native import Context, Vision
    from minicpmv_gguf.runtime import load_image

    vision = Vision(model.mmprojs["16x"], model.lm, threads=N_THREADS)
    media = vision.tokenize(load_image(tiny_files.image_a).rgb)
    embs = {i: vision.encode(p) for i, p in enumerate(media.parts) if not isinstance(p, list)}
    head, tail = model.lm.tokenize("<|im_start|>user\nLook:"), model.lm.tokenize(" What?<|im_end|>\n")
    runs = {}
    for way in ("libmtmd", "ours", "ours again"):
        with Context(model.lm, n_ctx=512, n_batch=64, threads=N_THREADS) as ctx:  # n_batch < image: split
            ctx.decode(head, 0, logits_last=False)
            pos = len(head)
            for i, part in enumerate(media.parts):
                if isinstance(part, list):
                    ctx.decode(part, pos, logits_last=False)
                elif way == "libmtmd":
                    vision.decode(ctx, part, embs[i], pos)
                else:
                    ctx.decode_embd(embs[i], pos)
                pos += len(part) if isinstance(part, list) else part.n_pos
            ctx.decode(tail, pos, logits_last=True)
            runs[way] = ctx.logits(len(tail) - 1, len(tail))
    media.close()
    vision.close()
    assert np.array_equal(runs["libmtmd"], runs["ours"]) and np.array_equal(runs["ours"], runs["ours again"])

"""`minicpmv-gguf serve` through the official openai client: answers, streaming, images, caching, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.serve_cases import API_KEY, data_uri, png_bytes, start

pytestmark = pytest.mark.slow
N = 12  # reply tokens: enough to tell answers apart, short enough for CI


def user(text, *images, detail=None):
    parts = [{"type": "image_url", "image_url": {"url": u, **({"detail": detail} if detail else {})}} for u in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def ask(server, messages, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", N)
    return server.client().chat.completions.create(model="minicpm-v4.6", messages=messages, **kw)


def run_cli_json(files, prompt, *images):
    args = [sys.executable, "-m", "minicpmv_gguf.cli", "run", files.lm, "--mmproj", files.mm16, "--threads", "1"]
    args += [a for i in images for a in ("--image", i)] + [
        "-p",
        prompt,
        "--temperature",
        "0",
        "--max-tokens",
        N,
        "--json",
    ]
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_greedy_chat_equals_run_and_streamed_equals_not(server, serve_files, tiny_files):
    want = run_cli_json(serve_files, "What is in the picture?", tiny_files.image_a)["text"]
    reply = ask(server, [user("What is in the picture?", data_uri(tiny_files.image_a))])
    assert reply.choices[0].message.content.strip() == want
    assert reply.usage.prompt_tokens_details.cached_tokens >= 0 and reply.usage.completion_tokens <= N
    stream = ask(server, [user("What is in the picture?", data_uri(tiny_files.image_a))], stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_usage_is_streamed_when_asked(server):
    chunks = list(ask(server, [user("Hello")], stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0


def test_several_images_and_turns(server, tiny_files):
    a, b = data_uri(tiny_files.image_a), data_uri(tiny_files.image_b)
    first = ask(server, [user("Compare them.", a, b)])
    history = [user("Compare them.", a, b), {"role": "assistant", "content": first.choices[0].message.content}]
    second = ask(server, history + [user("And now this one?", data_uri(tiny_files.image_c))])
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens > 0  # the first turn was not evaluated again


def test_detail_high_uses_4x_and_low_fits_one_slice(server, tiny_files):
    c = data_uri(tiny_files.image_c)
    auto, high, low = (ask(server, [user("Read it.", c, detail=d)], max_tokens=1) for d in ("auto", "high", "low"))
    assert high.usage.prompt_tokens > auto.usage.prompt_tokens  # 4x: four times the visual tokens
    assert low.usage.prompt_tokens < auto.usage.prompt_tokens  # one slice, no overview + slices


def test_exif_rotated_jpeg_answers_as_the_upright_image(server, serve_files):
    import base64

    from PIL import Image, ImageOps

    from tests.fixtures.tiny_checkpoint import make_image

    rotated = serve_files.root / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees: viewers rotate it back
    make_image(200, 120, seed=3).save(rotated, quality=95, exif=exif.tobytes())
    upright = png_bytes(ImageOps.exif_transpose(Image.open(rotated)).convert("RGB"))
    raw = png_bytes(Image.open(rotated).convert("RGB"))  # the stored pixels, orientation ignored
    answers = [
        ask(server, [user("What is it?", url)]).choices[0].message.content
        for url in (data_uri(rotated), "data:image/png;base64," + base64.b64encode(upright).decode())
    ]
    assert answers[0] == answers[1]
    ignored = ask(server, [user("What is it?", "data:image/png;base64," + base64.b64encode(raw).decode())])
    assert ignored.usage.prompt_tokens != ask(server, [user("What is it?", data_uri(rotated))]).usage.prompt_tokens


def test_json_schema_reply_parses_and_validates(server):
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer"}},
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    reply = ask(
        server,
        [user("Which colour, how many?")],
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"colour", "count"} and value["colour"] in ("red", "green", "blue")
    assert isinstance(value["count"], int)


def test_tool_messages_render_through_the_template(server, serve_files):
    from minicpmv_gguf.runtime import open_model
    from minicpmv_gguf.runtime.prompt import ChatTemplate

    tools = [{"type": "function", "function": {"name": "count", "parameters": {"type": "object"}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "count", "arguments": '{"shape": "square"}'}}
    messages = [
        user("How many squares?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    reply = ask(server, messages, tools=tools)
    template_messages = [
        {"role": "user", "content": [{"type": "text", "text": "How many squares?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call, "function": {**call["function"], "arguments": {"shape": "square"}}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    with open_model(serve_files.lm) as model:
        text = ChatTemplate(model.lm.header.chat_template).render(template_messages, enable_thinking=False, tools=tools)
        n = len(model.lm.tokenize(text))
    assert "<parameter=shape>\nsquare\n</parameter>" in text and "<tool_response>\n3\n</tool_response>" in text
    assert reply.usage.prompt_tokens == n


def test_thinking_goes_to_reasoning_content(server):
    off = ask(server, [user("Think first.")])
    on = ask(server, [user("Think first.")], extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    effort = ask(server, [user("Think first.")], reasoning_effort="low")
    assert getattr(off.choices[0].message, "reasoning_content", None) is None
    assert on.choices[0].message.reasoning_content  # the random model never closes </think>: all reasoning
    assert on.usage.prompt_tokens == effort.usage.prompt_tokens < off.usage.prompt_tokens  # no `\n\n</think>\n\n`


def test_cached_answers_equal_a_fresh_server(server, serve_files, tiny_files):
    a = data_uri(tiny_files.image_a)
    first = ask(server, [user("What is in the picture?", a)]).choices[0].message.content
    resent = [user("What is in the picture?", a), {"role": "assistant", "content": first}, user("Why?")]
    again = ask(server, resent)
    seen = ask(server, [user("Which colours?", a)])
    assert again.usage.prompt_tokens_details.cached_tokens > 0 and seen.usage.prompt_tokens_details.cached_tokens > 0
    fresh = start(serve_files, "fresh")
    try:
        assert ask(fresh, resent).choices[0].message.content == again.choices[0].message.content
        assert ask(fresh, [user("Which colours?", a)]).choices[0].message.content == seen.choices[0].message.content
    finally:
        fresh.stop()


def bomb_png() -> bytes:
    """A tiny PNG whose header declares 100000 x 100000 pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_requests(serve_files):
    import base64

    outside = serve_files.root / "outside.png"
    outside.write_bytes((serve_files.media / "a.png").read_bytes())
    return {
        "bad base64": ([user("x", "data:image/png;base64,@@@not base64@@@")], {}, 400),
        "data:text/html": ([user("x", "data:text/html;base64," + base64.b64encode(b"<b>hi</b>").decode())], {}, 400),
        "file outside the media dir": ([user("x", outside.as_uri())], {}, 400),
        "remote URL without the flag": ([user("x", "http://127.0.0.1:9/a.png")], {}, 400),
        "unknown role": ([{"role": "wizard", "content": "hi"}], {}, 400),
        "n = 2": ([user("hi")], {"n": 2}, 400),
        "prompt longer than the context": ([user("word " * 1500)], {}, 400),
        "decompression bomb": ([user("x", "data:image/png;base64," + base64.b64encode(bomb_png()).decode())], {}, 400),
        "temperature of the wrong type": ([user("hi")], {"extra_body": {"temperature": "hot"}}, 422),
    }


def test_bad_requests_are_refused_and_the_next_one_works(server, serve_files):
    import openai

    rows = []
    for name, (messages, kw, status) in bad_requests(serve_files).items():
        with pytest.raises(openai.APIStatusError) as err:
            ask(server, messages, **kw)
        assert err.value.status_code == status, (name, err.value)
        assert str(serve_files.root) not in err.value.message, name  # no server paths in messages
        rows.append((name, err.value.status_code))
        assert ask(server, [user("hi")], max_tokens=2).choices[0].message is not None, name
    assert len(rows) == len(bad_requests(serve_files))


def test_a_body_over_the_cap_is_413(server):
    import httpx

    body = {"model": "minicpm-v4.6", "messages": [user("x" * (2 << 20))]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert ask(server, [user("hi")], max_tokens=2).choices


def test_a_missing_or_wrong_api_key_is_401(server):
    import httpx
    import openai

    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [user("hi")]})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").chat.completions.create(model="minicpm-v4.6", messages=[user("hi")])
    assert httpx.get(f"{server.url}/health").status_code == 200  # health needs no key


def test_models_lists_the_modes(server):
    [card] = server.client().models.list().data
    assert card.id == "minicpm-v4.6" and card.owned_by == "minicpmv-gguf" and card.created > 0
    assert card.model_extra["modes"] == ["16x", "4x"]


def test_a_client_that_disconnects_frees_the_server(server):
    import time

    import httpx

    body = {"messages": [user("Tell a long story.")], "stream": True, "max_tokens": 400, "temperature": 0.7}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i >= 4:
                break
    deadline = time.monotonic() + 10
    while server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.health()["busy"], "the generation went on after its client left"
    assert ask(server, [user("hi")], max_tokens=2).choices


def test_an_image_prepared_ahead_is_not_encoded_again(server, serve_files):
    import httpx

    from tests.fixtures.tiny_checkpoint import make_image

    path = serve_files.root / "ahead.png"
    make_image(96, 80, seed=11).save(path)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(f"{server.url}/v1/images/prepare", json={"image_url": {"url": data_uri(path)}}, headers=headers)
    assert r.status_code == 200, r.text
    [image] = r.json()["images"]
    assert image["tokens"] > 0 and not image["cached"]
    reply = ask(server, [user("What is it?", data_uri(path))])
    assert reply.model_extra["timings"]["images_encoded"] == 0
    bad = httpx.post(f"{server.url}/v1/images/prepare", json={"image": "x"}, headers=headers)
    assert bad.status_code == 400 and "image_url" in bad.json()["error"]["message"]


def test_an_unknown_model_is_404(server):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="gpt-4", messages=[user("hi")], max_tokens=2)
    assert "minicpm-v4.6" in err.value.message


def test_a_full_queue_is_503_with_retry_after():
    # The tiny model answers in milliseconds, so the worker is held by jobs that wait on an event instead.
    import asyncio
    import threading

    from minicpmv_gguf.serve.errors import ServeError
    from minicpmv_gguf.serve.worker import Worker

    release = threading.Event()

    def job(cancel):
        release.wait(10)
        yield "done"

    async def scenario():
        worker = Worker(max_queued=1)
        first = worker.submit(job)
        while not worker.busy:
            await asyncio.sleep(0.01)
        second = worker.submit(job)  # waits in the queue
        with pytest.raises(ServeError) as err:
            worker.submit(job)
        release.set()
        got = [await first.next(), await second.next()]
        worker.stop()
        return err.value, got

    err, got = asyncio.run(scenario())
    assert err.status == 503 and err.headers() == {"Retry-After": "1"} and err.body()["error"]["code"] == 503
    assert got == ["done", "done"]


def test_binding_beyond_loopback_needs_a_key_or_an_explicit_flag(serve_files):
    from tests.helpers import run_cli

    r = run_cli("serve", serve_files.lm, "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2 and "--api-key" in r.stderr and "--allow-insecure-bind" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_reply_is_warmed_in_spare_time_so_the_resent_conversation_costs_its_new_message(server, tiny_files):
    import time

    a = data_uri(tiny_files.image_b)
    first = ask(server, [user("Warm this one.", a)]).choices[0].message.content
    deadline = time.monotonic() + 10
    while server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the worker's spare-time task runs once nothing waits
    again = ask(server, [user("Warm this one.", a), {"role": "assistant", "content": first}, user("Why?")])
    new = again.usage.prompt_tokens - again.usage.prompt_tokens_details.cached_tokens
    assert new <= 24, new  # "Why?", the turn markers and the generation prompt; not the reply

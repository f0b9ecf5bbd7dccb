"""The chat page at GET / in a real browser: Debian's Chromium driven by Playwright, against `serve` with the
tiny random model (its replies are gibberish: the tests check the page, not the words).

Chromium comes from apt (scripts/test.sh installs it); Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.serve_cases import API_KEY, Server, start

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
HOUSE = Path(__file__).parent.parent / "examples" / "house.png"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail(f"no {CHROMIUM}: scripts/test.sh installs it (apt-get install chromium)")
        pytest.skip(f"no {CHROMIUM}, and not root to apt-get install chromium: the browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_server(serve_files):
    """The API key, a 1 MB body cap (for the error test) and room for a long reply (for Stop)."""
    s = start(serve_files, "page", "--max-body-mb", "1", "--ctx", "4096")
    yield s
    s.stop()


class Chat:
    """A page with the key already in sessionStorage, the chat requests it sent, and the browser's errors."""

    def __init__(self, browser, server, *, key=API_KEY, max_tokens=24, **context) -> None:
        context.setdefault("viewport", {"width": 1280, "height": 800})
        self.context = browser.new_context(bypass_csp=context.pop("bypass_csp", True), **context)
        if key:
            self.context.add_init_script(f"sessionStorage.setItem('minicpmv.apiKey', {json.dumps(key)})")
        self.page = self.context.new_page()
        self.server, self.max_tokens, self.overrides = server, max_tokens, {}
        self.sent, self.prepared, self.errors, self.urls = [], [], [], []
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("console", self._console)
        self.page.on("request", self._request)
        # The tiny model would talk for 1024 tokens: each test caps the reply (what the page sent is kept).
        self.page.route("**/v1/chat/completions", self._cap)

    def _console(self, message) -> None:
        # An HTTP error the page shows in words is also logged by the browser: that one is expected.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _request(self, request) -> None:
        self.urls.append(request.url)
        if request.url.endswith("/v1/images/prepare"):
            self.prepared.append(json.loads(request.post_data))

    def _cap(self, route) -> None:
        body = json.loads(route.request.post_data)
        self.sent.append(body)
        route.continue_(post_data=json.dumps({**body, "max_tokens": self.max_tokens, **self.overrides}))

    def throttle(self, bytes_per_s: int | None) -> None:
        """Deliver responses to the page this slowly (None: at full speed), as over a slow network.

        The tiny model writes thousands of tokens a second: slowed down, a reply is seen arriving and
        can be stopped half-way, every time."""
        cdp = self.context.new_cdp_session(self.page)
        cdp.send("Network.enable")
        rate = -1 if bytes_per_s is None else bytes_per_s
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": rate, "uploadThroughput": -1},
        )

    def open(self):
        self.page.goto(self.server.url + "/")
        self.page.wait_for_selector("#model:not(:empty)", state="attached")
        return self

    def attach(self, *paths) -> None:
        self.page.set_input_files("#file", [str(p) for p in paths])

    def ask(self, text: str, *, wait: bool = True) -> None:
        n = self.page.locator(".msg.assistant").count()
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")
        if wait:
            self.wait_reply(n + 1)

    def wait_reply(self, n: int) -> None:
        """Until the n-th reply has ended (it then has a status line or an error)."""
        from playwright.sync_api import expect

        last = self.page.locator(".msg.assistant").nth(n - 1)
        expect(last).to_have_attribute("aria-busy", "false", timeout=60_000)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


@pytest.fixture
def chat(browser, page_server):
    c = Chat(browser, page_server)
    yield c.open()
    c.close()


def test_the_page_and_its_files_are_served_without_a_key(page_server):
    import httpx

    r = httpx.get(page_server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache" and "script-src 'self'" in r.headers["content-security-policy"]
    for name, kind in (("main.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")):
        f = httpx.get(f"{page_server.url}/static/{name}")
        assert f.status_code == 200 and f.headers["content-type"].startswith(kind), name
        assert f.headers["cache-control"] == "no-cache"
    for bad in ("nope.js", ".hidden.js", "..%2Fapp.py", "page.py"):
        assert httpx.get(f"{page_server.url}/static/{bad}").status_code == 404, bad
    assert httpx.get(page_server.url + "/v1/models").status_code == 401  # the API still needs the key


def test_an_image_question_streams_in_with_its_status_line(chat, tmp_path):
    from playwright.sync_api import expect

    page = chat.page
    chat.max_tokens = 64
    chat.attach(HOUSE)
    expect(page.locator(".attachments .mark")).to_have_text("ready", timeout=30_000)  # encoded ahead
    chat.throttle(8 << 10)
    assert chat.prepared[0]["image_url"]["url"].startswith("data:image/png;base64,")
    # Each redraw of the reply while it streams: its text must grow in steps, not arrive at once.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const a = document.querySelector('.msg.assistant[aria-busy="true"] .answer');
            if (a && !a.querySelector('.waiting')) window.lengths.push(a.textContent.length);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")
    chat.ask("What is in the picture?")
    lengths = sorted(set(page.evaluate("window.lengths")))
    assert len(lengths) >= 3, f"the reply did not stream in: {lengths}"
    reply = page.locator(".msg.assistant").last
    assert reply.locator(".answer").inner_text().strip()
    status = reply.locator(".status").inner_text()
    assert "first token" in status and "tokens/s" in status and "prompt tokens cached" in status, status
    assert "image cached" in status, status  # prepared on attach: the question cost only the prompt
    thumb = page.locator(".msg.user img")
    assert thumb.count() == 1 and thumb.get_attribute("src").startswith("data:image/png;base64,")
    [body] = chat.sent
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    [message] = body["messages"]
    assert [p["type"] for p in message["content"]] == ["image_url", "text"]
    assert message["content"][1]["text"] == "What is in the picture?"
    assert all(u.startswith(chat.server.url) or u.startswith(("data:", "blob:")) for u in chat.urls), chat.urls
    page.screenshot(path=tmp_path / "chat-page.png", full_page=True)  # docs/screenshot.py takes the README's


def test_stop_ends_the_stream_and_the_server_is_free_for_the_next_message(chat):
    import time

    from playwright.sync_api import expect

    page = chat.page
    chat.max_tokens = 3500
    chat.throttle(8 << 10)
    for how in ("button", "escape"):
        n = page.locator(".msg.assistant").count()
        chat.ask("Tell a long story.", wait=False)
        expect(page.locator(".msg.assistant").nth(n).locator(".answer")).not_to_have_text("…", timeout=30_000)
        page.click("#stop") if how == "button" else page.keyboard.press("Escape")
        chat.wait_reply(n + 1)
        reply = page.locator(".msg.assistant").nth(n)
        expect(reply.locator(".status")).to_have_text("stopped")
        expect(page.locator("#send")).to_be_visible()
        deadline = time.monotonic() + 10
        while chat.server.health()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not chat.server.health()["busy"], f"the reply went on after Stop ({how})"
    chat.max_tokens = 8
    chat.throttle(None)
    chat.ask("And a short one?")
    assert "tokens/s" in page.locator(".msg.assistant .status").last.inner_text()
    assert [m["role"] for m in chat.sent[-1]["messages"]] == ["user", "assistant", "user", "assistant", "user"]


def test_a_reload_keeps_the_conversation_and_export_is_its_json(chat):
    from playwright.sync_api import expect

    page = chat.page
    chat.attach(HOUSE)
    chat.ask("What is in the picture?")
    chat.ask("Which colours?")
    answers = page.locator(".msg.assistant .answer").all_inner_texts()
    page.reload()
    expect(page.locator(".msg.assistant")).to_have_count(2)
    assert page.locator(".msg.assistant .answer").all_inner_texts() == answers
    assert page.locator(".msg.user img").count() == 1
    expect(page.locator("#chat-title")).to_have_text("What is in the picture?")
    with page.expect_download() as info:
        page.click("#export")
    exported = json.loads(Path(info.value.path()).read_text())
    assert exported["format"] == "minicpmv-gguf.chat/1" and exported["title"] == "What is in the picture?"
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant", "user", "assistant"]
    assert exported["messages"][0]["images"][0]["url"].startswith("data:image/png;base64,")
    assert all(m["content"] and m["timings"]["predicted_n"] > 0 for m in exported["messages"][1::2])
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator(".msg.assistant").first.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == exported["messages"][1]["content"]
    # Regenerate sends the same conversation again and replaces the last reply.
    before = len(chat.sent)
    page.locator(".msg.assistant").last.get_by_role("button", name="Regenerate").click()
    chat.wait_reply(2)
    assert chat.sent[-1]["messages"] == chat.sent[before - 1]["messages"]
    expect(page.locator(".msg.assistant")).to_have_count(2)
    # Rename, then a new chat, then delete the first: each survives a reload.
    page.locator("#chats li.current").get_by_role("button", name="Rename").click()
    page.fill("#chats input.rename", "House questions")
    page.press("#chats input.rename", "Enter")
    page.click("#new-chat")
    chat.ask("Hello?")
    page.reload()
    expect(page.locator("#chats .chat-link")).to_have_text(["Hello?", "House questions"])
    page.once("dialog", lambda d: d.accept())
    page.locator("#chats li", has_text="House questions").get_by_role("button", name="Delete").click()
    page.reload()
    expect(page.locator("#chats .chat-link")).to_have_text(["Hello?"])


def test_the_detail_and_thinking_switches_change_the_request(chat, browser, serve_files):
    from playwright.sync_api import expect

    page = chat.page
    assert page.locator("#detail").is_enabled()  # this server has the 4x mmproj
    page.check("#detail")
    page.check("#thinking")
    chat.attach(HOUSE)
    expect(page.locator(".attachments .mark")).to_have_text("ready", timeout=30_000)
    assert chat.prepared[-1]["image_url"]["detail"] == "high"
    chat.ask("Read it.")
    body = chat.sent[-1]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["messages"][0]["content"][0]["image_url"]["detail"] == "high"
    reasoning = page.locator(".msg.assistant details.reasoning").last
    expect(reasoning).to_be_visible()
    assert reasoning.get_attribute("open") is None  # collapsed above the answer
    assert (
        reasoning.locator(".md").text_content().strip()
    )  # hidden while collapsed; the random model never closes </think>
    page.uncheck("#detail")
    page.uncheck("#thinking")
    chat.attach(HOUSE)
    expect(page.locator(".attachments .mark")).to_have_text("ready", timeout=30_000)
    assert chat.prepared[-1]["image_url"]["detail"] == "auto"
    chat.ask("And now?")
    body = chat.sent[-1]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "detail" not in body["messages"][-1]["content"][0]["image_url"]
    assert body["messages"][0]["content"][0]["image_url"]["detail"] == "high"  # the first image keeps its own

    # A server with the 16x mmproj only: the switch is off with a reason; no key: no dialog.
    log = serve_files.root / "page-16x.log"
    only16 = Server(serve_files.lm, "--mmproj", serve_files.mm16, "--threads", "1", "--ctx", "1024", log=log)
    try:
        other = Chat(browser, only16, key=None).open()
        assert other.page.locator("#detail").is_disabled()
        assert "4x" in other.page.locator("#detail-label").get_attribute("title")
        assert not other.page.locator("#key-dialog").is_visible()
        other.close()
    finally:
        only16.stop()


def test_a_refused_image_is_shown_in_plain_words_and_the_next_message_works(chat, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    page = chat.page
    noise = tmp_path / "noise.png"  # random pixels do not compress: far over the 1 MB cap as a data URI
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)).save(noise)
    chat.attach(noise)
    expect(page.locator(".attachments .mark")).to_have_text("not prepared", timeout=30_000)
    expect(page.locator("#notice")).to_contain_text("too big for this server")
    chat.ask("What is this noise?")
    error = page.locator(".msg.assistant .error").last
    expect(error).to_contain_text("too big for this server")
    expect(error).to_contain_text("1 MB")
    expect(page.locator(".msg.assistant").last.get_by_role("button", name="Try again")).to_be_visible()
    chat.ask("Hello?")
    assert "tokens/s" in page.locator(".msg.assistant .status").last.inner_text()
    [message] = chat.sent[-1]["messages"]  # the refused exchange is not sent again
    assert message["content"] == [{"type": "text", "text": "Hello?"}]


SSE = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Let me *see*."}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi <script>window.pwned=1</script> **bo"}, "finish_reason": None}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": 'ld** and _it_ and `<b>x</b>`\n\n- one\n- two <img src=x onerror="window.pwned=2">\n\n'
                },
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {"content": "```python\nprint('<hr>')\n```\n"}, "finish_reason": None}]},
    {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "timings": {
            "cache_n": 3,
            "prompt_n": 5,
            "prompt_ms": 1.0,
            "predicted_n": 9,
            "predicted_ms": 10.0,
            "predicted_per_second": 900.0,
            "image_tokens": 0,
            "images_encoded": 0,
            "image_encode_ms": 0.0,
            "first_token_ms": 12.0,
        },
    },
    {
        "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 3}},
    },
]


def test_markdown_is_rendered_and_html_in_a_reply_is_shown_as_text(chat):
    page = chat.page
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in SSE) + "data: [DONE]\n\n"
    page.unroute("**/v1/chat/completions")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body),
    )
    chat.ask("Say hi.")
    reply = page.locator(".msg.assistant").last
    answer = reply.locator(".answer")
    assert page.evaluate("window.pwned") is None
    assert "Hi <script>window.pwned=1</script> bold and it and <b>x</b>" in answer.inner_text()
    assert answer.locator("script, img, b, hr").count() == 0
    assert answer.locator("strong").inner_text() == "bold" and answer.locator("em").inner_text() == "it"
    assert answer.locator("p code").inner_text() == "<b>x</b>"
    assert answer.locator("li").all_inner_texts() == ["one", 'two <img src=x onerror="window.pwned=2">']
    assert answer.locator("pre code").inner_text() == "print('<hr>')"
    reply.locator("details.reasoning summary").click()  # collapsed until opened
    assert reply.locator("details.reasoning em").inner_text() == "see"
    assert reply.locator(".status").inner_text() == ("first token 12 ms · 900.0 tokens/s · 3 of 8 prompt tokens cached")


def test_the_api_key_is_asked_once_and_kept_for_the_session(browser, page_server):
    from playwright.sync_api import expect

    c = Chat(browser, page_server, key=None, bypass_csp=False)
    page = c.page
    page.goto(page_server.url + "/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()  # GET /v1/models answered 401
    page.click("#key-dialog button[value=cancel]")
    expect(page.locator("#notice")).to_contain_text("needs an API key")
    page.fill("#input", "Hello?")
    page.press("#input", "Enter")
    expect(dialog).to_be_visible()  # asked again, once, for the two requests that met a 401
    page.fill("#key", "wrong")
    page.click("#key-dialog button[value=ok]")
    expect(page.locator("#key-why")).to_contain_text("refused")
    page.fill("#key", API_KEY)
    page.click("#key-dialog button[value=ok]")
    c.wait_reply(1)
    assert "tokens/s" in page.locator(".msg.assistant .status").last.inner_text()
    expect(page.locator("#model")).to_contain_text("minicpm-v4.6")
    page.reload()
    expect(page.locator("#model")).to_contain_text("minicpm-v4.6")
    assert not dialog.is_visible() and page.evaluate("sessionStorage.getItem('minicpmv.apiKey')") == API_KEY
    c.close()


def test_a_phone_in_dark_mode(browser, page_server, tmp_path):
    """390 px wide, dark, and the page's own CSP in force (no bypass): nothing overflows, the list slides in."""
    from playwright.sync_api import expect

    c = Chat(
        browser,
        page_server,
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
        reduced_motion="reduce",
        bypass_csp=False,
    )
    page = c.open().page
    c.attach(HOUSE)
    expect(page.locator(".attachments .mark")).to_have_text("ready", timeout=30_000)
    c.ask("What is in the picture?")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 24, 28)", background  # the dark palette
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    page.screenshot(path=tmp_path / "chat-page-phone-menu.png")
    page.mouse.click(370, 300)  # on the shade beside the list
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.screenshot(path=tmp_path / "chat-page-phone.png", full_page=True)
    c.close()


def test_a_big_rotated_photo_is_sent_upright_and_downscaled(chat, tmp_path):
    import base64
    import io

    from PIL import Image
    from playwright.sync_api import expect

    page = chat.page
    photo = tmp_path / "photo.jpg"  # stored 2400 x 1600 with a red top-left corner, EXIF: turn 90 degrees
    image = Image.new("RGB", (2400, 1600), (40, 90, 200))
    image.paste((220, 30, 30), (0, 0, 600, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(photo, quality=90, exif=exif.tobytes())
    chat.attach(photo)
    expect(page.locator(".attachments .mark")).to_have_text("ready", timeout=30_000)
    url = chat.prepared[-1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (1195, 1792)  # upright (portrait), the longest side at the page's 1792
    r, g, b = sent.getpixel((1100, 100))  # the stored top-left corner, turned to the top right
    assert r > 150 and g < 100 and b < 100, (r, g, b)
    chat.ask("Which way is up?")
    assert "1195×1792" in page.locator(".msg.user img").get_attribute("title")


def test_drop_and_paste_attach_images(chat):
    from playwright.sync_api import expect

    page = chat.page
    # A synthetic drop on the window and a paste in the message box, each with one PNG file.
    page.evaluate("""async () => {
        const canvas = Object.assign(document.createElement('canvas'), {width: 40, height: 30});
        canvas.getContext('2d').fillRect(0, 0, 20, 15);
        const blob = await new Promise((done) => canvas.toBlob(done, 'image/png'));
        const files = (name) => {
            const dt = new DataTransfer();
            dt.items.add(new File([blob], name, {type: 'image/png'}));
            return dt;
        };
        window.dispatchEvent(new DragEvent('dragenter', {dataTransfer: files('a.png'), cancelable: true}));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: files('dropped.png'), cancelable: true}));
        document.getElementById('input').dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: files('pasted.png'), bubbles: true, cancelable: true}));
    }""")
    expect(page.locator(".attachments .mark")).to_have_text(["ready", "ready"], timeout=30_000)
    expect(page.locator("#drop")).to_be_hidden()
    assert [p["image_url"]["url"][:22] for p in chat.prepared] == ["data:image/png;base64,"] * 2
    page.get_by_role("button", name="Remove pasted.png").click()
    chat.ask("What is it?")
    [message] = chat.sent[-1]["messages"]
    assert [p["type"] for p in message["content"]] == ["image_url", "text"]

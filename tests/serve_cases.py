"""Servers for the API tests: `minicpmv-gguf serve` in a child process on a free loopback port."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

API_KEY = "test-key"
RELEASED_TEMPLATE = Path(__file__).parent / "data" / "released_chat_template.jinja"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`serve ARGS` on 127.0.0.1; stopped (and its log kept) by `stop()`."""

    def __init__(self, *args, log: Path) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "minicpmv_gguf.cli", "serve", *map(str, args), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve did not answer /health in 120 s:\n{log.read_text()}")

    def client(self, api_key: str = API_KEY):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def data_uri(path: Path) -> str:
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def serve_files(tiny_files, tmp_path_factory) -> SimpleNamespace:
    """The tiny F32 pair with the released chat template (it renders tools), and a media directory."""
    from gguf import GGUFValueType

    from tests.runtime_cases import rewrite_gguf

    root = tmp_path_factory.mktemp("serve")
    lm = rewrite_gguf(
        tiny_files.lm,
        root / "lm-released-template.gguf",
        {"tokenizer.chat_template": (RELEASED_TEMPLATE.read_text(), GGUFValueType.STRING)},
    )
    media = root / "media"
    media.mkdir()
    (media / "a.png").write_bytes(tiny_files.image_a.read_bytes())
    return SimpleNamespace(lm=lm, mm16=tiny_files.mm16, mm4=tiny_files.mm4, media=media, root=root)


def start(files: SimpleNamespace, name: str, *extra) -> Server:
    args = [files.lm, "--mmproj", files.mm16, "--mmproj", files.mm4, "--threads", "1", "--api-key", API_KEY]
    return Server(*args, "--ctx", "1024", "--media-dir", files.media, *extra, log=files.root / f"{name}.log")


@pytest.fixture(scope="module")
def server(serve_files):
    s = start(serve_files, "main", "--max-body-mb", "1")
    yield s
    s.stop()

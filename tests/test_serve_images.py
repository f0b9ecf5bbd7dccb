"""image_url resolution: data URLs, base64, a local HTTP server (127.0.0.1, started here), the media directory,
pixel caps read from the header, EXIF orientation, detail=low and the pixel digest."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from minicpmv_gguf.serve.errors import ServeError
from minicpmv_gguf.serve.images import (
    DEFAULT_POLICY,
    ImagePolicy,
    decode_image,
    fit_within,
    image_bytes,
    pixel_digest,
    resolve_image,
)


def picture(width: int = 64, height: int = 32) -> np.ndarray:
    """An asymmetric test image: a gradient with a red block at the top left and a blue one at the bottom."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    rgb[:16, :16] = (220, 30, 30)
    rgb[-16:, 16:32] = (30, 30, 220)
    return rgb


def encode(rgb: np.ndarray, fmt: str = "PNG", orientation: int | None = None, **options) -> bytes:
    img = Image.fromarray(rgb)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def refused(url: str, policy: ImagePolicy = DEFAULT_POLICY, detail: str = "auto") -> str:
    with pytest.raises(ServeError) as err:
        resolve_image(url, detail, policy)
    assert err.value.status == 400
    return err.value.message


def test_a_data_url():
    rgb = picture()
    image = resolve_image(data_url(encode(rgb)))
    assert image.rgb.dtype == np.uint8 and np.array_equal(image.rgb, rgb)
    assert image.digest == pixel_digest(rgb)


def test_raw_base64_with_line_breaks_and_no_padding():
    b64 = base64.b64encode(encode(picture())).decode().rstrip("=")
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert np.array_equal(resolve_image(wrapped).rgb, picture())
    assert np.array_equal(resolve_image(base64.urlsafe_b64encode(encode(picture())).decode()).rgb, picture())


@pytest.mark.parametrize(
    "fmt, options", [("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}), ("GIF", {}), ("BMP", {})]
)
def test_formats(fmt, options):
    rgb = resolve_image(data_url(encode(picture(), fmt, **options), f"image/{fmt.lower()}")).rgb
    assert rgb.shape == (32, 64, 3)
    assert np.abs(rgb.astype(int) - picture()).mean() < (12 if fmt == "GIF" else 3)


def test_transparency_is_composited_onto_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # the top half opaque red, the bottom half transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    rgb = decode_image(buf.getvalue())
    assert (rgb[:2] == (255, 0, 0)).all() and (rgb[2:] == 255).all()


def test_an_untyped_data_url_is_sniffed():
    assert resolve_image("data:;base64," + base64.b64encode(encode(picture())).decode()).rgb.shape == (32, 64, 3)


@pytest.mark.parametrize(
    "url, message",
    [
        ("data:text/html;base64,PGgxPmhpPC9oMT4=", "a data: URL of type 'text/html' is not an image"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64", "needs a comma"),
        ("data:image/png;base64,@@not base64@@", "not valid base64"),
        ("data:image/png;base64,", "empty"),
        (data_url(b"hello, not an image"), "not an image format the server can decode"),
        (data_url(encode(picture())[:60]), "cannot be decoded"),
        ("aGVsbG8gd29ybGQ=", "not an image format"),
        ("ftp://example.com/a.png", "unsupported image URL scheme 'ftp'"),
        ("C:\\images\\a.png", "unsupported image URL scheme 'c'"),
        ("http://127.0.0.1:9/a.png", "does not fetch http(s) image URLs"),
        ("file:///etc/passwd", "does not read file:// image URLs"),
    ],
)
def test_refused(url, message):
    assert message in refused(url)


def test_the_pixel_cap_is_checked_before_decoding():
    for width, height in [(8000, 8000), (100_000, 100_000)]:
        bomb = png_declaring(width, height)
        assert len(bomb) < 100
        start = time.perf_counter()
        message = refused(data_url(bomb))
        assert time.perf_counter() - start < 1.0
        assert "more" in message and "pixels" in message and "40000000" in message
    assert "8000x8000 pixels" in refused(data_url(png_declaring(8000, 8000)))
    small = ImagePolicy(max_pixels=64 * 32 - 1)
    assert "64x32 pixels, more than the server's 2047" in refused(data_url(encode(picture())), small)
    assert resolve_image(data_url(encode(picture())), policy=ImagePolicy(max_pixels=64 * 32)).rgb.shape == (32, 64, 3)


# EXIF orientation k: how the stored pixels relate to the upright picture (numpy, not Pillow's table).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_png(orientation):
    upright = picture()
    stored = np.ascontiguousarray(STORED[orientation](upright))
    assert np.array_equal(resolve_image(data_url(encode(stored, "PNG", orientation))).rgb, upright)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_jpeg_comes_out_upright(orientation):
    upright = picture(64, 48)
    reference = resolve_image(data_url(encode(upright, "JPEG", quality=95, subsampling=0), "image/jpeg")).rgb
    stored = np.ascontiguousarray(STORED[orientation](upright))
    rotated = resolve_image(data_url(encode(stored, "JPEG", orientation, quality=95, subsampling=0), "image/jpeg"))
    assert rotated.rgb.shape == reference.shape == (48, 64, 3)
    assert np.abs(rotated.rgb.astype(int) - reference).mean() < 2
    assert (rotated.rgb[:16, :16].astype(int) - (220, 30, 30)).__abs__().max() < 24  # red block at the top left


def test_low_detail_fits_one_slice():
    wide = np.zeros((500, 1000, 3), np.uint8)
    low = resolve_image(data_url(encode(wide)), "low")
    assert low.rgb.shape == (224, 448, 3)
    assert resolve_image(data_url(encode(wide)), "high").rgb.shape == (500, 1000, 3)
    assert resolve_image(data_url(encode(picture())), "low").rgb.shape == (32, 64, 3)
    assert resolve_image(data_url(encode(wide)), "low", ImagePolicy(low_detail_side=100)).rgb.shape == (50, 100, 3)
    assert low.digest != resolve_image(data_url(encode(wide))).digest
    assert fit_within(np.zeros((1000, 10, 3), np.uint8), 448).shape == (448, 4, 3)
    assert "detail must be auto, low or high" in refused(data_url(encode(wide)), detail="max")


def test_the_digest_is_of_pixels_and_shape():
    rgb = picture()
    assert (
        resolve_image(data_url(encode(rgb))).digest == resolve_image(data_url(encode(rgb, "BMP"), "image/bmp")).digest
    )
    flat = np.arange(2 * 6 * 3, dtype=np.uint8)
    assert pixel_digest(flat.reshape(2, 6, 3)) != pixel_digest(flat.reshape(6, 2, 3))
    assert pixel_digest(rgb) != pixel_digest(rgb[::-1].copy())


# --- http(s): a server on 127.0.0.1, started and stopped by the fixture -----------------------------------

PNG_BYTES = encode(picture())


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, headers: dict, body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        routes = {
            "/cat.png": lambda: self._send(
                200, {"Content-Type": "image/png", "Content-Length": str(len(PNG_BYTES))}, PNG_BYTES
            ),
            "/cat-nolength": lambda: self._send(200, {"Content-Type": "image/png; q=1"}, PNG_BYTES),
            "/page": lambda: self._send(200, {"Content-Type": "text/html"}, b"<h1>hi</h1>"),
            "/redirect": lambda: self._send(302, {"Location": "/cat.png"}),
            "/redirect-absolute": lambda: self._send(301, {"Location": host + "/redirect"}),
            "/redirect-file": lambda: self._send(302, {"Location": "file:///etc/passwd"}),
            "/redirect-ftp": lambda: self._send(307, {"Location": "ftp://127.0.0.1/cat.png"}),
            "/loop": lambda: self._send(302, {"Location": "/loop"}),
            "/declared-big": lambda: self._send(200, {"Content-Type": "image/png", "Content-Length": "20000000"}, b"x"),
            "/streamed-big": lambda: self._send(200, {"Content-Type": "image/png"}, b"\0" * 5000),
            "/slow": self._slow,
            "/hang": lambda: (time.sleep(2), self._send(200, {"Content-Type": "image/png"}, PNG_BYTES)),
        }
        try:
            routes.get(self.path, lambda: self._send(404, {"Content-Type": "text/plain"}, b"no"))()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        for i in range(0, len(PNG_BYTES), 16):
            self.wfile.write(PNG_BYTES[i : i + 16])
            self.wfile.flush()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads, server.block_on_close = True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def remote(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return ImagePolicy(allow_remote=True, max_bytes=4000, timeout=1.0)


@pytest.mark.parametrize("path", ["/cat.png", "/cat-nolength", "/redirect", "/redirect-absolute"])
def test_remote_images(http_base, remote, path):
    assert np.array_equal(resolve_image(http_base + path, policy=remote).rgb, picture())


@pytest.mark.parametrize(
    "path, message",
    [
        ("/page", "content type is 'text/html', not an image"),
        ("/missing", "answered HTTP 404"),
        ("/redirect-file", "redirects to a URL that is not http(s)"),
        ("/redirect-ftp", "redirects to a URL that is not http(s)"),
        ("/loop", "redirects more than 5 times"),
        ("/declared-big", "larger than 4000 bytes"),
        ("/streamed-big", "larger than 4000 bytes"),
        ("/slow", "within 1 s"),
        ("/hang", "did not answer within 1 s"),
    ],
)
def test_remote_refusals(http_base, remote, path, message):
    start = time.perf_counter()
    assert message in refused(http_base + path, remote)
    assert time.perf_counter() - start < 2.5


def test_a_closed_port(remote):
    with socket_bound() as port:
        assert "cannot be fetched (ConnectError)" in refused(f"http://127.0.0.1:{port}/a.png", remote)


def socket_bound():
    """A port on 127.0.0.1 that is bound but not listening: connections to it are refused."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def bound():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        try:
            yield sock.getsockname()[1]
        finally:
            sock.close()

    return bound()


# --- file:// under the media directory -----------------------------------------------------------------


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "cat.png").write_bytes(PNG_BYTES)
    (root / "sub" / "dog.png").write_bytes(PNG_BYTES)
    (tmp_path / "secret.png").write_bytes(PNG_BYTES)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "inside.png").symlink_to(root / "sub" / "dog.png")
    (root / "big.png").write_bytes(b"\0" * 5000)
    return root


@pytest.mark.parametrize("name", ["cat.png", "sub/dog.png", "sub/../cat.png", "inside.png", "sub/%64og.png"])
def test_media_files(media, name):
    policy = ImagePolicy(media_dir=media)
    for url in (f"file:///{name}", f"file:{name}", f"file://{media}/{name}", f"file://localhost{media}/{name}"):
        assert np.array_equal(resolve_image(url, policy=policy).rgb, picture()), url


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///../secret.png", "outside the server's media directory"),
        ("file:///sub/../../secret.png", "outside the server's media directory"),
        ("file:///escape.png", "outside the server's media directory"),
        ("file:///missing.png", "names no file"),
        ("file:///sub", "names no file"),
        ("file://otherhost/cat.png", "cannot name a host"),
        ("file:///cat%00.png", "not a valid path"),
        ("file:///big.png", "larger than 4000 bytes"),
    ],
)
def test_media_refusals_never_show_paths(media, url, message):
    text = refused(url, ImagePolicy(media_dir=media, max_bytes=4000))
    assert message in text
    assert str(media.parent) not in text and "secret" not in text and "/tmp" not in text


def test_an_absolute_path_outside_is_read_as_relative_to_the_media_directory(media):
    text = refused(f"file://{media.parent}/secret.png", ImagePolicy(media_dir=media))
    assert text == "the file:// image URL names no file in the server's media directory"
    (media / media.parent.relative_to("/")).mkdir(parents=True)
    (media / media.parent.relative_to("/") / "secret.png").write_bytes(encode(picture()[::-1].copy()))
    served = resolve_image(f"file://{media.parent}/secret.png", policy=ImagePolicy(media_dir=media)).rgb
    assert np.array_equal(served, picture()[::-1])  # the copy inside the media directory, not the secret


def test_image_bytes_is_the_encoded_file(media):
    assert image_bytes("file:///cat.png", ImagePolicy(media_dir=media)) == PNG_BYTES
    assert image_bytes(data_url(PNG_BYTES)) == PNG_BYTES

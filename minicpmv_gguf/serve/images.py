"""A request's `image_url` resolved to RGB pixels, with a content hash for the server's embedding cache.

Accepted: `data:image/...;base64,` URLs and raw base64; `http(s)://` only when the server allows remote
images (size cap, total timeout, redirects only to http(s), image content types only); `file://` only
under the server's media directory. The pixel count is checked from the image header before any pixel is
decoded, so a small file that declares a huge image is refused cheaply. EXIF orientation is applied and
transparency composited onto white (as the runtime and the transformers processor do). Every failure is
a 400 whose message names the problem but never a server file-system path.

resolve_image does blocking I/O: call it from a worker thread, not from the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime.media import fit_rgb_within as fit_within
from ..runtime.media import pixel_digest, to_rgb
from .errors import ServeError

__all__ = [
    "DEFAULT_POLICY",
    "ImagePolicy",
    "ResolvedImage",
    "decode_image",
    "fit_within",
    "pixel_digest",
    "resolve_image",
]

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # llama-server's cap on downloaded media
DEFAULT_TIMEOUT = 10.0  # seconds, for the whole download (llama-server's)
LOW_DETAIL_SIDE = 448  # one slice of the MiniCPM-V 4.6 projector
MAX_REDIRECTS = 5
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")  # base64 has no ':', so raw base64 never matches
_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class ImagePolicy:
    """What the server accepts: remote URLs, a media directory for file:// URLs, and the caps."""

    allow_remote: bool = False
    media_dir: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # Pillow refuses images above ~179 megapixels whatever this says
    max_bytes: int = DEFAULT_MAX_BYTES  # for downloads and media files (the app caps the request body)
    timeout: float = DEFAULT_TIMEOUT
    low_detail_side: int = LOW_DETAIL_SIDE


DEFAULT_POLICY = ImagePolicy()


@dataclass(frozen=True, eq=False)
class ResolvedImage:
    """uint8 RGB pixels [height, width, 3] and `digest`, the sha256 of the shape and the pixels."""

    rgb: np.ndarray
    digest: str


def _bad(message: str) -> ServeError:
    return ServeError(400, message, param="messages")


def resolve_image(url: str, detail: str = "auto", policy: ImagePolicy = DEFAULT_POLICY) -> ResolvedImage:
    """The pixels an `image_url` names; `detail="low"` fits them into one low_detail_side square slice.

    Raises:
        ServeError: 400 for a URL the policy refuses, data that is not an image, or an image too large.
    """
    if detail not in ("auto", "low", "high"):
        raise _bad(f"image_url.detail must be auto, low or high, not {detail!r}")
    rgb = decode_image(image_bytes(url, policy), max_pixels=policy.max_pixels)
    if detail == "low":
        rgb = fit_within(rgb, policy.low_detail_side)
    return ResolvedImage(rgb, pixel_digest(rgb))


def image_bytes(url: str, policy: ImagePolicy = DEFAULT_POLICY) -> bytes:
    """The encoded image an `image_url` names (a data URL, raw base64, an http(s) or a file:// URL)."""
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return _data_url(url)
    if scheme in ("http", "https"):
        return _download(url, policy)
    if scheme == "file":
        return _media_file(url, policy)
    if scheme:
        raise _bad(f"unsupported image URL scheme {scheme[:20]!r} (expected data:, http(s): or file:)")
    return _base64(url)


def _base64(text: str) -> bytes:
    compact = "".join(text.split()).translate(_URLSAFE)  # line breaks and the URL-safe alphabet are common
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except binascii.Error as err:
        raise _bad("the image is not valid base64") from err
    if not data:
        raise _bad("the image data is empty")
    return data


def _data_url(url: str) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise _bad("a data: URL needs a comma before its data")
    media_type, *params = [p.strip().lower() for p in header.split(";")]
    if media_type and not media_type.startswith("image/"):
        raise _bad(f"a data: URL of type {media_type[:60]!r} is not an image")
    if "base64" not in params:
        raise _bad("a data: image URL must be base64-encoded (data:image/...;base64,...)")
    return _base64(payload)


def _download(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_remote:
        raise _bad("this server does not fetch http(s) image URLs; send the image as a data: URL")
    import httpx

    deadline = time.monotonic() + policy.timeout
    try:
        with httpx.Client(follow_redirects=False, timeout=policy.timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                    if not response.is_redirect:
                        return _body(response, policy, deadline)
                    url = str(response.url.join(response.headers["location"]))
                    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                        raise _bad("the image URL redirects to a URL that is not http(s)")
    except httpx.TimeoutException as err:
        raise _bad(f"the image URL did not answer within {policy.timeout:g} s") from err
    except httpx.HTTPError as err:  # connection refused, DNS, TLS, protocol errors; InvalidURL is not one
        raise _bad(f"the image URL cannot be fetched ({type(err).__name__})") from err
    except httpx.InvalidURL as err:
        raise _bad("the image URL is not a valid URL") from err
    raise _bad(f"the image URL redirects more than {MAX_REDIRECTS} times")


def _body(response, policy: ImagePolicy, deadline: float) -> bytes:
    if response.status_code != 200:
        raise _bad(f"the image URL answered HTTP {response.status_code}")
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media_type.startswith("image/"):
        raise _bad(f"the image URL's content type is {media_type[:60]!r}, not an image")
    too_big = _bad(f"the image at the URL is larger than {policy.max_bytes} bytes")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise too_big
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > policy.max_bytes:
            raise too_big
        if time.monotonic() > deadline:  # httpx's timeout is per read: a slow drip would never trip it
            raise _bad(f"the image URL did not send the image within {policy.timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_file(url: str, policy: ImagePolicy) -> bytes:
    """A file under the media directory: `file:///abs/path` inside it, or a path relative to it."""
    if policy.media_dir is None:
        raise _bad("this server does not read file:// image URLs")
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _bad("a file:// image URL cannot name a host")
    raw = urllib.parse.unquote(parts.path)
    try:
        root = Path(os.path.realpath(policy.media_dir))
        given = Path(os.path.realpath(raw)) if os.path.isabs(raw) else None
        real = given if given is not None and _inside(given, root) else Path(os.path.realpath(root / raw.lstrip("/")))
    except ValueError as err:  # a NUL byte in the path
        raise _bad("the file:// image URL is not a valid path") from err
    if not _inside(real, root):  # `..` and symlinks are resolved first, so neither can leave the directory
        raise _bad("the file:// image URL is outside the server's media directory")
    if not real.is_file():
        raise _bad("the file:// image URL names no file in the server's media directory")
    try:
        if real.stat().st_size > policy.max_bytes:
            raise _bad(f"the image file is larger than {policy.max_bytes} bytes")
        return real.read_bytes()
    except OSError as err:  # strerror only: the exception's text would show the path
        raise _bad(f"the image file cannot be read ({err.strerror})") from err


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB [h, w, 3]: the first frame, EXIF orientation applied, transparency composited onto white.

    Raises:
        ServeError: 400 for data Pillow cannot decode, or more than max_pixels pixels (read from the header).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise _bad(f"the image has {width}x{height} pixels, more than the server's {max_pixels}")
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as err:
        raise _bad("the image data is not an image format the server can decode") from err
    except Image.DecompressionBombError as err:
        raise _bad(f"the image has more pixels than the server's {max_pixels}") from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's ways of reporting truncated or corrupt data
        raise _bad(f"the image data cannot be decoded ({type(err).__name__})") from err


def _to_rgb(img) -> np.ndarray:
    try:
        return to_rgb(img)
    except InputError as err:  # an empty image
        raise _bad("the image is empty (0 pixels wide or high)") from err

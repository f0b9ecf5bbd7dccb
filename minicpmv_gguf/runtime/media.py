"""Images and video frames as RGB pixels for libmtmd.

Images: any file Pillow reads (EXIF rotation applied; transparency composited onto white, as the
transformers processor does), a PIL image or a uint8 array. Video: frames sampled at 1 frame per second
(the MiniCPM-V 4.6 video processor's rate) and, for videos longer than `max_frames` seconds, spread
evenly over the whole video. Video files are decoded with PyAV (`pip install av`), an optional
dependency; animated GIF, WebP and PNG files only need Pillow.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError

DEFAULT_MAX_FRAMES = 16  # 16 frames x 66 tokens (16x) fit a 4096-token context with room to answer
_serials = itertools.count()


@dataclass(frozen=True, eq=False)
class Picture:
    """One image or video frame: uint8 RGB pixels [height, width, 3] and where it came from."""

    rgb: np.ndarray
    source: str
    serial: int = field(default_factory=lambda: next(_serials))  # identifies it in a session's cache

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    @cached_property
    def digest(self) -> str:
        """sha256 of the shape and pixels: equal images give equal digests, whatever their source."""
        return pixel_digest(self.rgb)


def pixel_digest(rgb: np.ndarray) -> str:
    """sha256 of the shape and the pixels: equal for equal images, whatever file or object they came from."""
    h = hashlib.sha256(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb, dtype=np.uint8).data)
    return h.hexdigest()


ImageSource = Union[str, Path, "Image.Image", np.ndarray, Picture]  # noqa: F821 (PIL is imported lazily)


def load_image(src: ImageSource) -> Picture:
    """Read one image for the chat: a path, a PIL image, a uint8 array [h, w, 3] or a Picture.

    Raises:
        InputError: the file is missing, unreadable, not an image Pillow knows, or the array is not RGB.
    """
    from PIL import Image

    if isinstance(src, Picture):
        return src
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3 or 0 in src.shape:
            raise InputError(f"an image array must be uint8 [height, width, 3], got {src.dtype} {list(src.shape)}")
        return Picture(np.ascontiguousarray(src), "array")
    if isinstance(src, Image.Image):
        return Picture(to_rgb(src), "image")
    path = Path(src)
    with _open_image(path) as img:
        return Picture(to_rgb(_oriented(img)), str(path))


def _open_image(path: Path):
    """Image.open with every failure turned into an InputError that names the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: image not found" if not path.exists() else f"{path}: not a file")
    try:
        img = Image.open(path)
        img.load()
        return img
    except UnidentifiedImageError as err:
        raise InputError(f"{path}: not an image format Pillow can read") from err
    except Image.DecompressionBombError as err:
        raise InputError(f"{path}: the image is too large ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow reports truncated or corrupt data so
        raise InputError(f"{path}: cannot decode the image ({err})") from err


def _oriented(img):
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) or img


def to_rgb(img) -> np.ndarray:
    """uint8 RGB; transparency is composited onto white (transformers' convert_to_rgb)."""
    from PIL import Image

    if img.width < 1 or img.height < 1:
        raise InputError("an empty image (0 pixels wide or high)")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def fit_within(picture: Picture, side: int) -> Picture:
    """The picture downscaled (bicubic, aspect kept) to fit a side x side box; unchanged if it already fits.

    Video frames are fitted into the mmproj's slice size so that libmtmd encodes each frame as one
    overview without slices, like the processor's `max_slice_nums=1` for video.
    """
    rgb = fit_rgb_within(picture.rgb, side)
    return picture if rgb is picture.rgb else Picture(rgb, picture.source)


def fit_rgb_within(rgb: np.ndarray, side: int) -> np.ndarray:
    """uint8 RGB [h, w, 3] downscaled (bicubic, aspect kept) to fit a side x side box; the same array if it fits."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(w, h) <= side:
        return rgb
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BICUBIC))


def frame_times(duration: float, max_frames: int, fps: float = 1.0) -> list[float]:
    """Timestamps (seconds) to sample: every 1/fps from 0, or max_frames of them spread over the video."""
    times = [i / fps for i in range(max(1, math.ceil(duration * fps - 1e-9)))]
    if len(times) > max_frames:
        times = [times[i] for i in np.linspace(0, len(times) - 1, max_frames).round().astype(int)]
    return times


def pick_frames(frames: Iterable[tuple[float, object]], times: list[float]) -> list[object]:
    """For each time, the frame on screen then (the last one starting at or before it); frames in time order."""
    picked, prev, i = [], None, 0
    for start, frame in frames:
        while i < len(times) and start > times[i] + 1e-6:
            picked.append(frame if prev is None else prev)
            i += 1
        prev = frame
    picked += [prev] * (len(times) - i) if prev is not None else []
    return picked


def load_video(path: str | Path, *, max_frames: int = DEFAULT_MAX_FRAMES) -> list[Picture]:
    """Frames of a video file at 1 fps, at most `max_frames` (spread evenly over longer videos).

    Animated GIF, WebP and PNG files are read with Pillow, other files (mp4, mkv, webm, ...) with PyAV.

    Raises:
        InputError: the file is missing or unreadable, has no video frames, or needs PyAV, which is not installed.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if max_frames < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames}")
    if not path.is_file():
        raise InputError(f"{path}: video not found" if not path.exists() else f"{path}: not a file")
    try:
        with Image.open(path) as img:
            frames = _pillow_frames(img, path, max_frames)
    except UnidentifiedImageError:  # not an image format: a real video container
        frames = _pyav_frames(path, max_frames)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot decode the animation ({err})") from err
    if not frames:
        raise InputError(f"{path}: no video frames")
    return frames


def _pillow_frames(img, path: Path, max_frames: int) -> list[Picture]:
    """Frames of an animated image (a still image gives one frame); `duration` is per frame in ms."""
    starts, t = [], 0.0
    for i in range(getattr(img, "n_frames", 1)):
        img.seek(i)
        img.load()  # WebP fills in info["duration"] on load
        starts.append(t)
        t += max(img.info.get("duration") or 100, 1) / 1000  # browsers show 0-duration frames for ~100 ms

    def frames() -> Iterator[tuple[float, int]]:
        yield from ((s, i) for i, s in enumerate(starts))

    picked = pick_frames(frames(), frame_times(t, max_frames))
    out = []
    for i in picked:
        img.seek(i)
        out.append(Picture(to_rgb(img), f"{path}#{i}"))
    return out


def _pyav_frames(path: Path, max_frames: int) -> list[Picture]:
    try:
        import av
    except ImportError as err:
        raise InputError(
            f"{path}: reading this video needs PyAV, which is not installed: pip install av "
            "(animated GIF, WebP and PNG files work without it)"
        ) from err
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = _duration(container, stream) or _scan_duration(path)
            times = frame_times(duration, max_frames)
            decoded = ((f.time or 0.0, f) for f in container.decode(stream))
            picked = pick_frames(decoded, times)
            return [Picture(f.to_ndarray(format="rgb24"), f"{path}@{t:.1f}s") for f, t in zip(picked, times)]
    except av.FFmpegError as err:
        raise InputError(f"{path}: cannot decode the video ({err})") from err


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else None  # av.time_base is microseconds


def _scan_duration(path: Path) -> float:
    """Duration from the last frame's timestamp, for containers that do not record one."""
    import av

    with av.open(str(path)) as container:
        last = 0.0
        for frame in container.decode(video=0):
            last = frame.time or last
    return last + 1e-3

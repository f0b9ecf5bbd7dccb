"""Shared by the runtime tests: the tiny GGUF set, broken inputs, and the bad-input cases (API and CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

N_THREADS = 1  # no thread barriers: steady timings on a busy CI machine
QUESTION = "What is in the picture?"


@pytest.fixture(scope="session")
def tiny_files(tiny_ckpt, convert_cached, convert_mmproj_session, tmp_path_factory) -> SimpleNamespace:
    """The F32 LM GGUF, the 16x and 4x F32 mmproj GGUFs, and a few media files."""
    from tests.fixtures.tiny_checkpoint import make_image

    media = tmp_path_factory.mktemp("media")
    make_image(112, 112, seed=7).save(media / "a.png")
    make_image(112, 112, seed=8).save(media / "b.png")
    make_image(300, 200, seed=9).save(media / "c.jpg", quality=95)
    frames = [make_image(40, 30, seed=i) for i in range(10)]  # 10 x 0.25 s = 2.5 s: frames 0, 4, 8 at 1 fps
    frames[0].save(media / "clip.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    return SimpleNamespace(
        lm=convert_cached(tiny_ckpt, "f32"),
        mm16=convert_mmproj_session(tiny_ckpt, "16x"),
        mm4=convert_mmproj_session(tiny_ckpt, "4x"),
        image_a=media / "a.png",
        image_b=media / "b.png",
        image_c=media / "c.jpg",
        gif=media / "clip.gif",
    )


def rewrite_gguf(src: Path, dst: Path, changes: dict) -> Path:
    """Copy a GGUF with some key/values replaced by (value, GGUFValueType) (or dropped: None)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in changes:
            if changes[name] is not None:
                writer.add_key_value(name, *changes[name])
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=[int(d) for d in reversed(t.shape)], raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="session")
def bad_files(tiny_files, tiny_ckpt_kquant, convert_mmproj_session, tmp_path_factory) -> SimpleNamespace:
    """Broken or mismatched inputs, each one realistic."""
    from gguf import GGUFValueType

    d = tmp_path_factory.mktemp("bad")
    lm_bytes = tiny_files.lm.read_bytes()
    (d / "truncated.gguf").write_bytes(lm_bytes[: len(lm_bytes) * 2 // 3])
    (d / "notes.gguf").write_text("not a model\n")
    (d / "notes.png").write_text("not an image\n")
    png = tiny_files.image_a.read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    # clip.cpp reads image_size with a typed getter that aborts the process on any other type
    rewrite_gguf(tiny_files.mm16, d / "mmproj-int32.gguf", {"clip.vision.image_size": (112, GGUFValueType.INT32)})
    return SimpleNamespace(
        truncated_lm=d / "truncated.gguf",
        not_gguf=d / "notes.gguf",
        not_image=d / "notes.png",
        truncated_png=d / "truncated.png",
        mmproj_wrong_type=d / "mmproj-int32.gguf",
        mmproj_other_model=convert_mmproj_session(tiny_ckpt_kquant, "16x"),
    )


@dataclass(frozen=True)
class BadInput:
    """One bad input: how to call the runtime, the exception it must raise and words its message must hold."""

    name: str
    lm: str  # attribute of tiny_files / bad_files, or a literal path
    mmproj: tuple[str, ...]
    error: str
    words: str
    images: tuple[str, ...] = ()
    video: str | None = None
    detail: str | None = None
    n_ctx: int = 512
    text: str = QUESTION

    def resolve(self, files: SimpleNamespace, bad: SimpleNamespace) -> dict:
        def path(name: str) -> str:
            return str(getattr(files, name, None) or getattr(bad, name, None) or name)

        return {
            "lm": path(self.lm),
            "mmproj": [path(m) for m in self.mmproj],
            "images": [path(i) for i in self.images],
            "video": path(self.video) if self.video else None,
            "detail": self.detail,
            "n_ctx": self.n_ctx,
            "text": self.text,
        }


BAD_INPUTS = [
    BadInput("missing_lm", "/nonexistent/lm.gguf", ("mm16",), "ModelLoadError", "LM GGUF not found"),
    BadInput("truncated_lm", "truncated_lm", ("mm16",), "ModelLoadError", "corrupt or truncated"),
    BadInput("not_gguf", "not_gguf", (), "ModelLoadError", "not a GGUF file"),
    BadInput("mmproj_as_lm", "mm16", (), "ModelLoadError", "mmproj GGUF where the LM GGUF was expected"),
    BadInput("lm_as_mmproj", "lm", ("lm",), "ModelLoadError", "expected 'clip'"),
    BadInput("missing_mmproj", "lm", ("/nonexistent/mmproj.gguf",), "ModelLoadError", "mmproj GGUF not found"),
    BadInput("mmproj_other_model", "lm", ("mmproj_other_model",), "ModelLoadError", "come from different models"),
    BadInput("mmproj_wrong_key_type", "lm", ("mmproj_wrong_type",), "ModelLoadError", "stored as INT32"),
    BadInput("two_16x_mmprojs", "lm", ("mm16", "mm16"), "ModelLoadError", "are both 16x"),
    BadInput("missing_image", "lm", ("mm16",), "InputError", "image not found", images=("/nonexistent/cat.jpg",)),
    BadInput("not_an_image", "lm", ("mm16",), "InputError", "not an image format", images=("not_image",)),
    BadInput("truncated_image", "lm", ("mm16",), "InputError", "cannot decode the image", images=("truncated_png",)),
    BadInput("image_without_mmproj", "lm", (), "InputError", "need an mmproj", images=("image_a",)),
    BadInput("detail_high_without_4x", "lm", ("mm16",), "InputError", "needs a 4x mmproj", detail="high"),
    BadInput("missing_video", "lm", ("mm16",), "InputError", "video not found", video="/nonexistent/clip.mp4"),
    # llama.cpp rounds a context up to a multiple of 256 tokens: 256 is the smallest
    BadInput(
        "prompt_too_long",
        "lm",
        ("mm16",),
        "InputError",
        "but the context holds 256",
        n_ctx=256,
        text="The quick brown fox jumps over the lazy dog. " * 40,
    ),
    BadInput(
        "images_too_long_for_context",
        "lm",
        ("mm4",),
        "InputError",
        "for images) but the context holds 256",
        images=("image_c",) * 3,
        n_ctx=256,
    ),
]

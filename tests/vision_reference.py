"""Moved to minicpmv_gguf.verify.vision: `verify` uses the same helpers as the tests."""

from minicpmv_gguf.verify.vision import *  # noqa: F401,F403
from minicpmv_gguf.verify.vision import MEDIA_MARKER  # noqa: F401

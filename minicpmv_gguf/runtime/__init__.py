"""CPU chat with MiniCPM-V 4.6 GGUFs through llama-cpp-python (llama.cpp + libmtmd).

>>> from minicpmv_gguf.runtime import open_model
>>> with open_model("lm-Q4_K_M.gguf", ["mmproj-16x.gguf", "mmproj-4x.gguf"]) as model:
...     chat = model.chat()                       # 16x; model.chat(detail="high") for 4x
...     print(chat.send("What is in the picture?", ["cat.jpg"]).text)
...     for piece in chat.stream("And in the background?"):
...         print(piece, end="", flush=True)
...     print(chat.last_reply.timings.summary())
"""

from ..native import physical_cores
from ..spec import DETAIL_MODES
from .chat import ChatSession, Reply, Timings
from .headers import LMHeader, MmprojHeader, read_lm_header, read_mmproj_header
from .media import DEFAULT_MAX_FRAMES, Picture, load_image, load_video
from .model import Model, open_model
from .sampling import GREEDY, Sampling

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "DETAIL_MODES",
    "GREEDY",
    "ChatSession",
    "LMHeader",
    "MmprojHeader",
    "Model",
    "Picture",
    "Reply",
    "Sampling",
    "Timings",
    "load_image",
    "load_video",
    "open_model",
    "physical_cores",
    "read_lm_header",
    "read_mmproj_header",
]

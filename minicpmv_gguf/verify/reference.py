"""The PyTorch reference and llama.cpp side by side: load both, run the same token ids.

The comparisons themselves (NMSE, KL divergence, top-1) are in minicpmv_gguf.metrics.

Shared by `minicpmv-gguf verify` and the parity tests. torch and transformers are imported inside the
functions that need them, so importing this module needs neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..spec import DEFAULT_MODE

N_THREADS = 2  # the tests' thread count: results do not depend on it, speed does


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """float32 logits [T, vocab] of the transformers reference for one sequence."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def load_llama(gguf_path: Path, n_ctx: int = 2048, **kwargs):
    """A CPU Llama that keeps the logits of every position (llm.scores)."""
    from ..native import llama_cpp  # the toolkit's loader: its log callback is in place before the Llama logs

    kwargs.setdefault("logits_all", True)
    kwargs.setdefault("n_threads", N_THREADS)
    return llama_cpp().Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, n_batch=512, n_gpu_layers=0, verbose=False, **kwargs
    )


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """float32 logits [T, vocab] from llama.cpp for one sequence (memory reset first)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


def load_reference_model(path: Path):
    """Load the checkpoint at `path` as a float32, eval-mode MiniCPMV4_6ForConditionalGeneration (SDPA)."""
    import torch
    from transformers import MiniCPMV4_6ForConditionalGeneration

    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(
        Path(path), dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    return model.eval()


def apply_loras(model, records: list[dict]):
    """`model` with the LoRA adapters a build merged (manifest options.loras) merged by PEFT at their scales.

    Raises:
        VerifyError: an adapter is gone or its files changed since the build.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from ..errors import VerifyError
    from ..lora.adapter import open_adapter

    for rec in records:
        if open_adapter(Path(rec["path"])).sha256 != rec["sha256"]:
            raise VerifyError(f"{rec['path']}: the LoRA adapter changed since the build; rebuild before verifying")
        model = PeftModel.from_pretrained(model, rec["path"])
        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                layer.scale_layer(rec["scale"])  # the build's --lora-scale, on PEFT's own alpha / r
        model = model.merge_and_unload().eval()
    return model


def load_processor(path: Path, *, pil: bool = False):
    """The MiniCPMV4_6Processor at `path`; without torchvision, assembled with a stub video processor.

    pil=True swaps in the PIL image processor, whose bicubic resampler libmtmd reproduces.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, MiniCPMV4_6Processor

    path = Path(path)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError:  # MiniCPMV4_6VideoProcessor requires torchvision
        processor = MiniCPMV4_6Processor(
            image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
            video_processor=stub_video_processor(),
            tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
            chat_template=(path / "chat_template.jinja").read_text(encoding="utf-8"),
        )
    if pil:
        from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

        if not isinstance(processor.image_processor, MiniCPMV4_6ImageProcessorPil):  # torchvision installed
            processor.image_processor = MiniCPMV4_6ImageProcessorPil.from_pretrained(path, local_files_only=True)
    return processor


def stub_video_processor():
    """A video processor that satisfies MiniCPMV4_6Processor.__init__ without torchvision (no video support)."""
    import transformers
    from transformers.video_processing_utils import BaseVideoProcessor, VideoProcessorMixin

    # Without torchvision transformers does not export VideoProcessorMixin, yet ProcessorMixin checks against it.
    if "VideoProcessorMixin" not in vars(transformers):
        transformers.VideoProcessorMixin = VideoProcessorMixin

    class _NoVideoProcessor(BaseVideoProcessor):
        slice_mode = True
        downsample_mode = DEFAULT_MODE
        use_image_id = False

    return _NoVideoProcessor()


def make_image(width: int, height: int, seed: int = 1234):
    """Return a seeded random RGB PIL image of the given size."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)

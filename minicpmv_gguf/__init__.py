"""Convert, quantize and run OpenBMB's MiniCPM-V 4.6 as GGUF files for llama.cpp on a CPU.

The pipeline, one function per step (each also a `minicpmv-gguf` command):

    convert_lm(checkpoint, out)             the language model -> a qwen35 LM GGUF
    convert_mmproj(checkpoint, out, mode)   the vision tower -> a clip mmproj GGUF per mode (16x, 4x)
    quantize_lm(lm_gguf, out, qtype)        llama.cpp's own quantizer (Q4_K_M, ...)
    build(checkpoint, out_dir)              all of the above, an Ollama package and a manifest, resumable
    verify.verify(build_dir)                parity of the GGUFs with transformers (needs torch)
    open_model(lm, mmprojs).chat()          chat about images on the CPU (llama.cpp + libmtmd)
    package_ollama(lm, mmproj, out_dir)     a Modelfile and both GGUFs for `ollama create`
    create_app(Settings(lm, mmprojs))       the OpenAI-compatible server (`serve`; needs the serve extra)

Names are imported on first use, so `import minicpmv_gguf` stays fast.
"""

__version__ = "0.1.0"

_WHERE = {
    "convert_lm": "convert_hf_to_gguf",
    "convert_mmproj": "mmproj",
    "quantize_lm": "quantize",
    "build": "pipeline",
    "open_model": "runtime",
    "package_ollama": "ollama",
    "create_app": "serve",
    "Settings": "serve",
}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'minicpmv_gguf' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value

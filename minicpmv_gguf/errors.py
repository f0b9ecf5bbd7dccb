"""The toolkit's error types: each one is a problem the user can fix, printed on one line by the CLI."""

from __future__ import annotations


class ToolkitError(Exception):
    """A problem the user can fix; the message names the file and the problem."""


class CheckpointError(ToolkitError):
    """The Hugging Face checkpoint is missing a file, is corrupt, or is not MiniCPM-V 4.6."""


class TensorMapError(CheckpointError):
    """Checkpoint tensors that no rule maps, or that do not have the shape the config implies."""


class TokenizerError(CheckpointError):
    """The tokenizer files are missing, unreadable, or do not fit the model."""


class GGUFError(ToolkitError):
    """A GGUF file is missing, truncated, or not a GGUF."""


class OutputError(ToolkitError):
    """The output path cannot be written (exists, unwritable directory, disk full)."""


class ManifestError(OutputError):
    """A build directory's manifest.json is unreadable, of another version, or has a malformed field."""


class OptionError(ToolkitError):
    """A `build` option that is not one of its choices (mmproj modes, output types)."""


class QuantizeError(ToolkitError):
    """A quantization request llama.cpp cannot carry out (type, imatrix, input), or that it rejected."""


class OllamaError(ToolkitError):
    """An Ollama package cannot be built, or a Modelfile breaks Ollama's grammar or its file rules."""


class ModelLoadError(ToolkitError):
    """A GGUF the runtime cannot use: missing, corrupt, the wrong kind, or not matching its LM or mmproj."""


class InputError(ToolkitError):
    """A chat input the runtime cannot use: an unreadable or unsupported image or video, or a too-long prompt."""


class SourceError(ToolkitError):
    """A build's SOURCE is neither a checkpoint directory nor a reachable Hugging Face repo id."""


class VerifyError(ToolkitError):
    """Verification cannot run: no build manifest, or the PyTorch reference (torch, transformers) is missing."""


class ClosedError(ToolkitError):
    """A llama.cpp model, context, sampler or mmproj used after its close()."""


class LoraError(ToolkitError):
    """A LoRA adapter that cannot be used: missing files, an unsupported PEFT type, or made for another base."""

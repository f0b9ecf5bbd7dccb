#!/usr/bin/env python3
"""Build a full-size, random-weight MiniCPM-V 4.6 checkpoint for conversion benchmarks.

    python benchmarks/make_full_size_checkpoint.py OUT_DIR [--shards 3] [--seed 0]

The real weights cannot be downloaded here, so this writes a stand-in with the same layout as
openbmb/MiniCPM-V-4.6: the 779 tensors (1.30 B parameters) of the released checkpoint, with their
real names and shapes, as bf16 safetensors shards plus `model.safetensors.index.json`. Names and
shapes come from instantiating `MiniCPMV4_6ForConditionalGeneration` from `real-config/` on the
meta device; `lm_head.weight` is skipped because it is tied to the embeddings.

Values are random (seeded per tensor, so they do not depend on --shards):
  * weights and biases ~ N(0, 0.02);
  * Qwen3.5 RMSNorms, which compute x*(1+w), ~ N(0, 0.1);
  * LayerNorms and the gated DeltaNet norm, which compute x*w, ~ 1 + N(0, 0.1);
  * A_log = log(U(1, 16)) and dt_bias = 1, as in the Qwen3.5 initialisation.

The real tokenizer.json is not available either. This builds a byte-level BPE with the Qwen3.5
pre-tokenizer whose regular vocabulary (ids 0..248043: the 256 byte symbols plus synthetic merged
tokens, one merge per token) is made up, followed by added tokens at 248044..248093. The ids of
<|endoftext|>, <|im_start|>, <|im_end|>, <|vision_start|>, <|vision_end|>, <|image_pad|> and
<|video_pad|> are the real ones; the others follow the Qwen3 order, and the MiniCPM-V markers
(<image>, <slice>, <image_id>, <unk>, ...) sit where this script puts them, so read ids from the
tokenizer rather than assuming them. len(tokenizer) equals the config's vocab_size (248094).

Only one shard is held in memory at a time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REAL_CONFIG = HERE / "real-config"
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)

# Qwen3.5 pre-tokenizer regex (the "pretokenize_regex" of the real tokenizer_config.json).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Added tokens in id order from FIRST_ADDED_ID; (content, special). The first 26 follow the Qwen3
# layout, which puts <|vision_start|>, <|image_pad|> and <|video_pad|> at their real ids.
FIRST_ADDED_ID = 248044
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    # From here on the ids are this script's choice (the real ones are unknown).
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<|audio_pad|>", True),
    ("<unk>", True),
    ("<image>", True),
    ("</image>", True),
    ("<slice>", True),
    ("</slice>", True),
    ("<image_id>", True),
    ("</image_id>", True),
]
REAL_IDS = {  # checked after building: these must match the released tokenizer
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
}


def tensor_specs(config_dir: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init kind) of every saved tensor, from the real classes on the meta device."""
    from transformers import AutoConfig, MiniCPMV4_6ForConditionalGeneration

    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = MiniCPMV4_6ForConditionalGeneration(config)
    module_type = {name: type(mod).__name__ for name, mod in model.named_modules()}
    specs = []
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":  # tied to embed_tokens; the released files omit it
            continue
        owner, _, leaf = name.rpartition(".")
        kind = {"Qwen3_5RMSNorm": "rms_norm", "Qwen3_5RMSNormGated": "unit_norm", "LayerNorm": "unit_norm"}.get(
            module_type.get(owner, ""), "normal"
        )
        if kind != "normal" and leaf == "bias":
            kind = "normal"
        if leaf in ("A_log", "dt_bias"):
            kind = leaf
        specs.append((name, tuple(t.shape), kind))
    return specs


def init_tensor(name: str, shape: tuple[int, ...], kind: str, seed: int) -> torch.Tensor:
    # Seed from the name, so a tensor's values do not depend on sharding or order.
    g = torch.Generator().manual_seed((seed << 32) | zlib.crc32(name.encode()))
    if kind == "A_log":
        return torch.empty(shape).uniform_(1, 16, generator=g).log_().to(torch.bfloat16)
    if kind == "dt_bias":
        return torch.ones(shape, dtype=torch.bfloat16)
    t = torch.randn(shape, generator=g, dtype=torch.bfloat16)  # bf16 directly: 3x faster than via fp32
    if kind == "rms_norm":
        return t.mul_(0.1)
    if kind == "unit_norm":
        return t.mul_(0.1).add_(1.0)
    return t.mul_(0.02)


def plan_shards(specs: list, n_shards: int) -> list[list]:
    """Split the tensors, in order, into n contiguous groups of roughly equal byte size."""
    sizes = [2 * torch.Size(shape).numel() for _, shape, _ in specs]
    total, shards, start = sum(sizes), [[] for _ in range(n_shards)], 0
    for spec, size in zip(specs, sizes):
        idx = min(n_shards - 1, int((start + size / 2) * n_shards // total))
        shards[idx].append(spec)
        start += size
    return [s for s in shards if s]


def write_weights(out: Path, specs: list, n_shards: int, seed: int) -> None:
    shards = plan_shards(specs, n_shards)
    weight_map, total_bytes, total_params = {}, 0, 0
    for i, group in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: init_tensor(name, shape, kind, seed) for name, shape, kind in group}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total_bytes += t.numel() * t.element_size()
            total_params += t.numel()
        print(f"  {fname}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values()) / 1e6:.1f} M params")
        del tensors  # keep at most one shard alive
    index = {
        "metadata": {"total_size": total_bytes, "total_parameters": total_params},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"  {len(weight_map)} tensors, {total_params:,} params, {total_bytes / 1e9:.2f} GB")


def byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols in GPT-2/Qwen id order (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def synthetic_bpe(n_regular: int, seed: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A consistent vocab + merges: every token past the bytes is (existing token) + (existing token)."""
    rng = random.Random(seed)
    symbols = byte_symbols()
    tokens = list(symbols)
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    while len(tokens) < n_regular:
        # Favour early (short) tokens and mostly grow by one byte symbol: lengths come out like a
        # real BPE vocabulary (mean ~6.7 symbols), which matters for the converters' vocab memory.
        left = tokens[int(len(tokens) * rng.random() ** 2)]
        right = symbols[rng.randrange(256)] if rng.random() < 0.7 else tokens[int(len(tokens) * rng.random() ** 4)]
        new = left + right
        if len(new) > 16 or new in vocab:
            continue
        vocab[new] = len(tokens)
        tokens.append(new)
        merges.append((left, right))
    return vocab, merges


def write_tokenizer(out: Path, vocab_size: int, seed: int) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = synthetic_bpe(FIRST_ADDED_ID, seed)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()

    added = list(ADDED_TOKENS)
    added += [(f"<|reserved_special_token_{i}|>", True) for i in range(vocab_size - FIRST_ADDED_ID - len(added))]
    for content, special in added:  # one at a time, so ids follow the list order
        t = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([t])
    tok.save(str(out / "tokenizer.json"))

    # Checks that the converters rely on.
    ids = {t: tok.token_to_id(t) for t, _ in added}
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size, tok.get_vocab_size()
    assert ids[added[0][0]] == FIRST_ADDED_ID and ids[added[-1][0]] == vocab_size - 1
    assert all(ids[t] == i for t, i in REAL_IDS.items()), ids
    print(f"  tokenizer.json: {len(vocab)} BPE tokens, {len(merges)} merges, {len(added)} added tokens")


def check_tokenizer(out: Path, vocab_size: int) -> None:
    """The transformers loader must see the same vocabulary (the converters go through it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == vocab_size, len(tok)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 248056
    text = "<|im_start|>user\nHello, world! 你好 123<|im_end|>\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text, tok.decode(ids)
    print(f"  AutoTokenizer: {type(tok).__name__}, len {len(tok)}, round trip ok")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("model-*.safetensors"):  # a previous build with another --shards
        stale.unlink()
    for name in CONFIG_FILES:
        shutil.copyfile(REAL_CONFIG / name, out / name)
    vocab_size = json.loads((REAL_CONFIG / "config.json").read_text())["text_config"]["vocab_size"]

    print(f"tokenizer -> {out}")
    write_tokenizer(out, vocab_size, args.seed)
    check_tokenizer(out, vocab_size)
    print(f"weights -> {out} ({args.shards} shards, seed {args.seed})")
    write_weights(out, tensor_specs(REAL_CONFIG), args.shards, args.seed)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""verify: a build directory's GGUFs against the PyTorch reference of the checkpoint, as a table of checks.

Checks: the files still match the manifest; the checkpoint is the build's source; llama.cpp's token ids
equal Hugging Face's on fixed strings; text logits (NMSE for an unquantized LM GGUF, KL divergence for
a quantized one); image embeddings per mmproj mode, on a seeded image of the processor's slice size so
that both pipelines see the same pixels (no resize).
"""

from __future__ import annotations

import gc
import logging
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VerifyError
from ..gguf_io import read_gguf_header
from ..metrics import NmseSums, cosine_rows, kl_divergence, nmse, top1_matches
from ..pipeline.manifest import matches, read_manifest, write_manifest
from ..pipeline.source import fingerprint, resolve_source, sha256_file
from ..pipeline.workdir import BuildLock
from ..spec import DEFAULT_MODE, LM_ARCH, MODE_BY_SCALE, MODES
from .bounds import lm_float_bounds, lm_quant_bounds, mmproj_bounds
from .reference import (
    N_THREADS,
    apply_loras,
    hf_logits,
    llama_logits,
    load_llama,
    load_processor,
    load_reference_model,
    make_image,
)
from .texts import chat_prompts, tokenizer_strings

log = logging.getLogger(__name__)
FLOAT_TYPES = ("F32", "F16", "BF16")
LONG_PROMPT = 512  # tokens: 8 DeltaNet chunks of 64; the tests also run 1,100


@dataclass(frozen=True)
class Check:
    """One row of the verify table."""

    check: str
    file: str
    metric: str
    value: str
    bound: str
    ok: bool


@dataclass(frozen=True)
class VerifyReport:
    """Every check of one build directory against one checkpoint."""

    build_dir: Path
    checkpoint: str
    rows: list[Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = ("check", "file", "metric", "value", "bound", "result")
        cells = [head] + [(r.check, r.file, r.metric, r.value, r.bound, "ok" if r.ok else "FAIL") for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        failed = sum(not r.ok for r in self.rows)
        lines.append(
            f"{self.build_dir} against {self.checkpoint}: "
            + (f"all {len(self.rows)} checks passed" if not failed else f"{failed} of {len(self.rows)} checks FAILED")
            + f" ({self.seconds:.1f} s)"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "rows": [asdict(r) for r in self.rows],
        }


def verify(
    build_dir: Path, checkpoint: str | Path | None = None, *, threads: int | None = None, record: bool = True
) -> VerifyReport:
    """Run every check of `build_dir` against `checkpoint` (default: the build's own source).

    Args:
        record: write the summary into the build's manifest.json (as "verify").
    Raises:
        VerifyError: no manifest, or torch/transformers missing. Failed checks are rows, not errors.
    """
    t0 = time.perf_counter()
    build_dir = Path(build_dir)
    if read_manifest(build_dir) is None:
        raise VerifyError(f"{build_dir}: no manifest.json: not a build directory (make one with `minicpmv-gguf build`)")
    _require_reference()
    with BuildLock(build_dir, "verify"):
        manifest = read_manifest(build_dir)
        src = resolve_source(checkpoint if checkpoint is not None else manifest["source"]["path"])
        files = {n: r for n, r in manifest["files"].items() if "link_to" not in r}
        rows = [_files_row(build_dir, manifest), _source_row(src.path, manifest)]
        lms = [n for n, r in files.items() if r.get("architecture") == LM_ARCH]
        mmprojs = sorted(n for n, r in files.items() if r.get("architecture") == "clip")
        if not lms:
            raise VerifyError(f"{build_dir}: the manifest lists no LM GGUF")
        lm_main = next((n for n in lms if files[n].get("file_type") not in FLOAT_TYPES), lms[0])
        log.info("verify: loading the PyTorch reference from %s", src.path)
        model, processor = load_reference_model(src.path), load_processor(src.path, pil=True)
        model = apply_loras(model, manifest["options"].get("loras") or [])  # what the build merged in
        threads = threads or N_THREADS
        rows.append(_tokenizer_row(build_dir / lm_main, processor.tokenizer))
        prompts = chat_prompts(processor.tokenizer, long_tokens=LONG_PROMPT)
        refs = [hf_logits(model, ids) for ids in prompts]
        for name in lms:
            rows += _logit_rows(build_dir / name, files[name].get("file_type"), prompts, refs, threads)
        del refs
        for name in mmprojs:
            rows += _image_rows(
                build_dir / name, build_dir / lm_main, files[name].get("file_type"), model, processor, threads
            )
        report = VerifyReport(build_dir, src.describe(), rows, time.perf_counter() - t0)
        if record:
            verified = {n: sha256_file(build_dir / n) for n in files if (build_dir / n).is_file()}
            manifest["verify"] = {**report.as_dict(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": verified}
            write_manifest(build_dir, manifest)
        return report


def _require_reference() -> None:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as err:
        raise VerifyError(
            f"verify compares the GGUFs with the PyTorch reference, which needs torch and transformers "
            f"({err.name} is not installed): pip install torch transformers"
        ) from None
    if not hasattr(transformers, "MiniCPMV4_6ForConditionalGeneration"):
        raise VerifyError(
            f"transformers {transformers.__version__} has no MiniCPM-V 4.6 model; install transformers>=5.23"
        )


def _files_row(build_dir: Path, manifest: dict) -> Check:
    bad = []
    for name, rec in manifest["files"].items():
        path = build_dir / name
        if "link_to" in rec:
            target = build_dir / rec["link_to"]
            intact = path.exists() and target.exists() and path.samefile(target)
        else:
            intact = matches(path, rec)
        if not intact:
            bad.append(name)
    n = len(manifest["files"])
    return Check(
        "files",
        f"{n} files",
        "size + sha256 as recorded",
        f"{n - len(bad)}/{n}" + (f" ({', '.join(bad)} changed)" if bad else ""),
        "all",
        not bad,
    )


def _source_row(path: Path, manifest: dict) -> Check:
    same = manifest["source"].get("path") == str(path)
    digest, _ = fingerprint(path, manifest["source"].get("files") if same else None)
    ok = digest == manifest["source"].get("fingerprint")
    return Check(
        "source", path.name, "content fingerprint", "the build's source" if ok else "another checkpoint", "equal", ok
    )


def _tokenizer_row(lm: Path, tokenizer) -> Check:
    """llama.cpp has no NFC step (the HF tokenizer has), so it gets NFC text, as the runtime gives it."""
    llm = load_llama(lm, n_ctx=256, vocab_only=True)
    try:
        cases = tokenizer_strings()
        same = sum(
            llm.tokenize(unicodedata.normalize("NFC", t).encode(), add_bos=False, special=True)
            == tokenizer(t, add_special_tokens=False).input_ids
            for t in cases
        )
    finally:
        llm.close()
    return Check("tokenizer", lm.name, "token ids equal", f"{same}/{len(cases)} strings", "all", same == len(cases))


def _logit_rows(
    lm: Path, file_type: str | None, prompts: list[list[int]], refs: list[np.ndarray], threads: int
) -> list[Check]:
    log.info("verify: text logits of %s", lm.name)
    llm = load_llama(lm, n_ctx=max(map(len, prompts)) + 8, n_threads=threads)
    try:
        if llm.n_vocab() != refs[0].shape[-1]:
            return [
                Check("text logits", lm.name, "vocabulary", f"{llm.n_vocab()} vs {refs[0].shape[-1]}", "equal", False)
            ]
        stats = [_compare_logits(llama_logits(llm, ids), ref) for ids, ref in zip(prompts, refs)]
    finally:
        llm.close()
    n = sum(map(len, prompts))
    top1 = sum(s[2] for s in stats) / n
    if file_type in FLOAT_TYPES:
        max_nmse, min_top1 = lm_float_bounds(file_type)
        worst = max(s[0] for s in stats)
        return [
            Check(
                "text logits",
                lm.name,
                f"worst NMSE ({n} positions)",
                f"{worst:.3g}",
                f"<= {max_nmse:g}",
                worst <= max_nmse,
            ),
            Check("text logits", lm.name, "top-1 agreement", f"{top1:.2%}", f">= {min_top1:.0%}", top1 >= min_top1),
        ]
    max_kld, min_top1 = lm_quant_bounds(file_type or "")
    kld = sum(s[1] for s in stats) / n
    return [
        Check("text logits", lm.name, f"mean KLD ({n} positions)", f"{kld:.4g}", f"<= {max_kld:g}", kld <= max_kld),
        Check("text logits", lm.name, "top-1 agreement", f"{top1:.2%}", f">= {min_top1:.0%}", top1 >= min_top1),
    ]


def _compare_logits(out: np.ndarray, ref: np.ndarray, rows: int = 32) -> tuple[float, float, int]:
    """(NMSE, summed KL divergence, top-1 matches) of one prompt, a few rows at a time.

    Whole-prompt float64 temporaries of a 248k vocabulary would take gigabytes.
    """
    errors, kld, top1 = NmseSums(), 0.0, 0
    for i in range(0, len(ref), rows):
        o, r = out[i : i + rows].astype(np.float64), ref[i : i + rows].astype(np.float64)
        errors = errors.add(o, r)
        kld += float(kl_divergence(o, r).sum())
        top1 += top1_matches(o, r)
    return errors.value, kld, top1


def _image_rows(mmproj: Path, lm: Path, file_type: str | None, model, processor, threads: int) -> list[Check]:
    from .vision import hf_image_embeddings, mtmd_image_embeddings

    kvs = read_gguf_header(mmproj).kvs
    mode = MODE_BY_SCALE.get(kvs.get("clip.vision.projector.scale_factor", MODES[DEFAULT_MODE]), DEFAULT_MODE)
    check, side = f"image {mode}", processor.image_processor.scale_resolution
    width, n_embd = kvs.get("clip.vision.projection_dim"), read_gguf_header(lm).kvs.get(f"{LM_ARCH}.embedding_length")
    if width != n_embd:  # libmtmd would abort the process on this
        return [Check(check, mmproj.name, "embedding width", f"{width} vs the LM's {n_embd}", "equal", False)]
    log.info("verify: image embeddings of %s (%dx%d image)", mmproj.name, side, side)
    image = make_image(side, side, seed=side)
    ref = hf_image_embeddings(model, processor, image, mode)
    llm = load_llama(lm, n_ctx=512, logits_all=False, n_threads=threads)
    try:
        got = mtmd_image_embeddings(llm, mmproj, image)
    except RuntimeError as err:
        return [Check(check, mmproj.name, "libmtmd encode", str(err), "succeeds", False)]
    finally:
        llm.close()
        gc.collect()
    counts = [len(x) for x in got], [len(x) for x in ref]
    if counts[0] != counts[1]:
        return [Check(check, mmproj.name, "tokens per chunk", f"{counts[0]} vs {counts[1]}", "equal", False)]
    if got[0].shape[-1] != ref[0].shape[-1]:  # a checkpoint of another width than the build's
        return [
            Check(check, mmproj.name, "embedding width", f"{got[0].shape[-1]} vs {ref[0].shape[-1]}", "equal", False)
        ]
    min_cos, max_nmse = mmproj_bounds(file_type or "F32")
    cos = min(float(cosine_rows(g, r).min()) for g, r in zip(got, ref))
    err = max(nmse(g, r) for g, r in zip(got, ref))
    return [
        Check(
            check,
            mmproj.name,
            f"min token cosine ({sum(counts[0])} tokens)",
            f"{cos:.7f}",
            f">= {min_cos:g}",
            cos >= min_cos,
        ),
        Check(check, mmproj.name, "worst NMSE", f"{err:.3g}", f"<= {max_nmse:g}", err <= max_nmse),
    ]

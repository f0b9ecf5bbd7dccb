"""Fuzzing the LM and mmproj GGUF checks: seeded mutants of a good file, each opened in a forked child.

Every mutant goes through `open_model` and one image turn in a child process forked from a parent
that imported everything once (milliseconds per mutant). A child ends with a code: 0 answered, 1
refused with a ToolkitError (its one line comes back through a pipe), 2 any other exception. A child
killed by a signal (SIGSEGV, SIGABRT from a GGML_ASSERT) is what must never happen.

    python -m benchmarks.fuzz_gguf --mutants 5000            # both kinds, the example checkpoint
    python -m benchmarks.fuzz_gguf --kind mmproj --seed 7 --mutants 300 --keep /tmp/crashers

Mutations: bit flips and 8-byte overwrites in the fixed header, the key/value region and the tensor-info
region; truncations; tensors renamed, dropped or duplicated; dimensions swapped or changed; tensor
types changed; key values stored under another type.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HEADER = 24  # magic, version, tensor count, key/value count
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGML_TYPES = (0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 20, 23, 24, 26, 28, 30, 31, 39, 41, 99)


@dataclass
class Layout:
    """A GGUF split into what the mutations touch: raw key/value records, tensor infos, and the data."""

    version: int
    kvs: list[tuple[str, int, bytes]]  # key, value type, the value's raw bytes
    tensors: list[list]  # [name, dims (ggml order), ggml type, offset]
    alignment: int
    data: bytes
    kv_span: tuple[int, int] = (0, 0)  # byte ranges in the original file
    ti_span: tuple[int, int] = (0, 0)

    def to_bytes(self) -> bytes:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kvs)))
        for key, vtype, raw in self.kvs:
            out += _string(key) + struct.pack("<I", vtype) + raw
        for name, dims, ggml_type, offset in self.tensors:
            out += (
                _string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", ggml_type, offset)
            )
        out += b"\0" * (-len(out) % self.alignment)
        return bytes(out) + self.data


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def parse(blob: bytes) -> Layout:
    """The layout of a well-formed GGUF (the unmutated source file)."""
    pos = HEADER
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8 + n
        return blob[pos - n : pos].decode()

    def skip_value(vtype: int) -> None:
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            sub, n = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            for _ in range(n):
                skip_value(sub)
        else:
            pos += _SCALAR_SIZES[vtype]

    kvs, alignment = [], 32
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        start = pos
        skip_value(vtype)
        kvs.append((key, vtype, blob[start:pos]))
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", blob, start)
    kv_end, tensors = pos, []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", blob, pos + 4))
        ggml_type, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append([name, dims, ggml_type, offset])
    data_start = pos + (-pos % alignment)
    return Layout(version, kvs, tensors, alignment, blob[data_start:], (HEADER, kv_end), (kv_end, pos))


# -- mutations: (rng, original bytes, layout copy) -> (mutant bytes, description) --------------------------


def _flip(rng: random.Random, blob: bytes, span: tuple[int, int], what: str) -> tuple[bytes, str]:
    out = bytearray(blob)
    i = rng.randrange(*span)
    bit = rng.randrange(8)
    out[i] ^= 1 << bit
    return bytes(out), f"flip bit {bit} of byte {i} ({what})"


def _overwrite(rng: random.Random, blob: bytes, span: tuple[int, int], what: str) -> tuple[bytes, str]:
    out = bytearray(blob)
    i = rng.randrange(span[0], max(span[0] + 1, span[1] - 8))
    value = rng.choice([0, 1, 2**32 - 1, 2**63, 2**64 - 1, rng.getrandbits(64), rng.getrandbits(16)])
    out[i : i + 8] = struct.pack("<Q", value)
    return bytes(out), f"overwrite 8 bytes at {i} with {value:#x} ({what})"


def _regions(layout: Layout) -> dict[str, tuple[int, int]]:
    return {"header": (0, HEADER), "key/values": layout.kv_span, "tensor infos": layout.ti_span}


def mutate_bytes(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    what, span = rng.choice(list(_regions(layout).items()))
    return (_flip if rng.random() < 0.6 else _overwrite)(rng, blob, span, what)


def truncate(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    end = layout.ti_span[1] if rng.random() < 0.7 else len(blob)
    cut = rng.randrange(0, end)
    return blob[:cut], f"truncate to {cut} bytes"


def _pick(rng: random.Random, layout: Layout, matrix: bool = False) -> list:
    pool = [t for t in layout.tensors if len(t[1]) >= 2] if matrix else layout.tensors
    return rng.choice(pool)


def rename(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    t = _pick(rng, layout)
    old = t[0]
    choice = rng.randrange(3)
    if choice == 0:  # a typo
        i = rng.randrange(len(old))
        t[0] = old[:i] + rng.choice("abcxyz_.0123") + old[i + 1 :]
    elif choice == 1:  # another block's number, or another tensor's name (a duplicate)
        t[0] = old.replace(".1.", ".0.") if ".1." in old else _pick(rng, layout)[0]
    else:
        t[0] = old + ".weight" if not old.endswith(".weight") else old[: -len(".weight")] + ".bias"
    return layout.to_bytes(), f"rename {old} to {t[0]}"


def drop(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    t = _pick(rng, layout)
    layout.tensors.remove(t)
    return layout.to_bytes(), f"drop {t[0]}"


def duplicate(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    t = _pick(rng, layout)
    layout.tensors.insert(rng.randrange(len(layout.tensors) + 1), [t[0], list(t[1]), t[2], t[3]])
    return layout.to_bytes(), f"duplicate {t[0]}"


def reshape(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    t = _pick(rng, layout, matrix=rng.random() < 0.7)
    old = list(t[1])
    choice = rng.randrange(4)
    if choice == 0 and len(old) >= 2:
        t[1] = [old[1], old[0], *old[2:]]
    elif choice == 1:
        i = rng.randrange(len(old))
        t[1][i] = rng.choice([max(1, old[i] // 2), old[i] * 2, old[i] + 1, 1, 0])
    elif choice == 2:
        t[1] = old + [1] if len(old) < 4 else old[:-1]
    else:
        t[1] = [old[0] * old[1], *old[2:]] if len(old) >= 2 else [1, old[0]]
    return layout.to_bytes(), f"dims of {t[0]} {old} -> {t[1]}"


def retype(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    t = _pick(rng, layout)
    old, t[2] = t[2], rng.choice([g for g in _GGML_TYPES if g != t[2]])
    return layout.to_bytes(), f"type of {t[0]} {old} -> {t[2]}"


def rekey(rng: random.Random, blob: bytes, layout: Layout) -> tuple[bytes, str]:
    """A key/value stored under another type: same-size scalars reinterpreted, or re-encoded to another size."""
    i = rng.randrange(len(layout.kvs))
    key, vtype, raw = layout.kvs[i]
    if vtype in _SCALAR_SIZES:
        same = [t for t, n in _SCALAR_SIZES.items() if n == _SCALAR_SIZES[vtype] and t != vtype]
        if same and rng.random() < 0.5:
            new, new_raw = rng.choice(same), raw
        else:
            new = rng.choice([t for t in _SCALAR_SIZES if t != vtype])
            new_raw = bytes(_SCALAR_SIZES[new])[:-1] + b"\x01"
    elif vtype == 9:  # an array of another element type, same bytes
        sub = struct.unpack_from("<I", raw)[0]
        new, new_raw = 9, struct.pack("<I", rng.choice([t for t in (0, 4, 5, 6, 7, 8) if t != sub])) + raw[4:]
    else:  # a string stored as a number or a bool
        new, new_raw = rng.choice([(4, struct.pack("<I", 7)), (10, struct.pack("<Q", 7)), (7, b"\x01")])
    layout.kvs[i] = (key, new, new_raw)
    return layout.to_bytes(), f"key {key}: type {vtype} -> {new}"


MUTATIONS: list[tuple[Callable, float]] = [
    (mutate_bytes, 4),
    (truncate, 1),
    (rename, 1),
    (drop, 1),
    (duplicate, 0.5),
    (reshape, 1.5),
    (retype, 1),
    (rekey, 1),
]


def mutant(seed: int, blob: bytes) -> tuple[bytes, str]:
    """The `seed`-th mutant of a GGUF (the same seed always gives the same mutant)."""
    rng = random.Random(seed)
    fn = rng.choices([m for m, _ in MUTATIONS], [w for _, w in MUTATIONS])[0]
    return fn(rng, blob, parse(blob))


# -- running mutants -----------------------------------------------------------------------------------------

ANSWERED, REFUSED, OTHER_ERROR = 0, 1, 2


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    answered: int = 0
    signalled: list[str] = field(default_factory=list)
    bad_messages: list[str] = field(default_factory=list)  # refused, but not one line naming the file
    other_errors: list[str] = field(default_factory=list)  # an exception that is not the toolkit's
    hung: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    def line(self, kind: str) -> str:
        return (
            f"{kind}: {self.tried} mutants tried, {self.refused} refused with a message, {self.answered} loaded and "
            f"answered, {len(self.signalled)} killed by a signal, {len(self.other_errors)} other errors, "
            f"{len(self.bad_messages)} bad messages, {len(self.hung)} hung"
        )

    @property
    def failures(self) -> list[str]:
        return self.signalled + self.other_errors + self.bad_messages + self.hung


def _child(lm: Path, mmproj: Path, image: Path, out: int) -> None:
    """In the forked child: open the pair, one image turn; report on fd `out`; never return."""
    code, message = OTHER_ERROR, ""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)  # llama.cpp's own prints and backtraces
        from minicpmv_gguf.errors import ToolkitError
        from minicpmv_gguf.runtime import GREEDY, open_model

        try:
            with open_model(lm, [mmproj], threads=1) as model:
                model.chat(sampling=GREEDY, n_ctx=512).send("What is in the picture?", images=[image], max_tokens=2)
            code = ANSWERED
        except ToolkitError as err:
            code, message = REFUSED, str(err)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which counts it as a failure
        code, message = OTHER_ERROR, f"{type(err).__name__}: {err}"
    os.write(out, message.encode("utf-8", "replace")[:4000])
    os._exit(code)


def run_one(lm: Path, mmproj: Path, image: Path, timeout: float = 60.0) -> tuple[str, str]:
    """("answered" | "refused" | "error" | "signal" | "hung", message) for one pair, in a forked child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(lm, mmproj, image, w)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hung", f"no result in {timeout:.0f} s"
        time.sleep(0.002)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return "signal", signal.Signals(os.WTERMSIG(status)).name
    code = os.WEXITSTATUS(status)
    return {ANSWERED: "answered", REFUSED: "refused"}.get(code, "error"), message


def campaign(
    kind: str, files: dict[str, Path], image: Path, seeds: range, work: Path, keep: Path | None = None
) -> Tally:
    """Mutate `files[kind]` once per seed and run each mutant with the other file intact."""
    source = files[kind]
    blob = source.read_bytes()
    tally = Tally()
    target = work / f"mutant-{kind}.gguf"
    for seed in seeds:
        data, what = mutant(seed, blob)
        target.write_bytes(data)
        lm, mm = (target, files["mmproj"]) if kind == "lm" else (files["lm"], target)
        outcome, message = run_one(lm, mm, image)
        tally.tried += 1
        label = f"seed {seed}: {what}: {message}"
        if outcome == "answered":
            tally.answered += 1
        elif outcome == "refused":
            tally.refused += 1
            if "\n" in message or str(target) not in message:
                tally.bad_messages.append(label)
            reason = message.replace(f"{target}: ", "")[:60]
            tally.reasons["".join(ch if ch.isprintable() else "?" for ch in reason)] += 1
        else:
            getattr(tally, {"signal": "signalled", "error": "other_errors", "hung": "hung"}[outcome]).append(label)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{kind}-seed{seed}.gguf").write_bytes(data)
    return tally


def prepare(checkpoint: Path, work: Path) -> tuple[dict[str, Path], Path]:
    """The F32 LM, the 16x mmproj and a 112x112 image, converted into `work` (torch-free)."""
    import numpy as np
    from PIL import Image

    from minicpmv_gguf.convert_hf_to_gguf import convert_lm
    from minicpmv_gguf.mmproj import convert_mmproj

    files = {"lm": work / "lm.gguf", "mmproj": work / "mmproj-16x.gguf"}
    convert_lm(checkpoint, files["lm"], outtype="f32", overwrite=True)
    convert_mmproj(checkpoint, files["mmproj"], mode="16x", outtype="f32", overwrite=True)
    image = work / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(image)
    return files, image


def preload() -> None:
    """Import the runtime and load llama.cpp once in the parent, so that each fork starts warm."""
    from minicpmv_gguf.native import llama_cpp
    from minicpmv_gguf.runtime import open_model  # noqa: F401

    llama_cpp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).parent.parent / "examples/tiny-minicpmv46")
    parser.add_argument("--kind", choices=("lm", "mmproj", "both"), default="both")
    parser.add_argument("--mutants", type=int, default=5000, help="per file kind")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--keep", type=Path, help="save mutants that crash or hang here")
    args = parser.parse_args(argv)
    preload()
    failed = False
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as tmp:
        files, image = prepare(args.checkpoint, Path(tmp))
        for kind in ("lm", "mmproj") if args.kind == "both" else (args.kind,):
            t0 = time.perf_counter()
            tally = campaign(kind, files, image, range(args.seed, args.seed + args.mutants), Path(tmp), args.keep)
            print(f"{tally.line(kind)} ({time.perf_counter() - t0:.0f} s)")
            for reason, n in tally.reasons.most_common(8):
                print(f"    {n:6d}  {reason}")
            for failure in tally.failures[:20]:
                print(f"  FAILED {failure}")
            failed |= bool(tally.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

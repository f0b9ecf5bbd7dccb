#!/usr/bin/env python3
"""Compare two GGUF files key by key and tensor by tensor (e.g. ours against llama.cpp's converter).

    python benchmarks/compare_gguf.py OURS.gguf BASELINE.gguf

Prints keys present in only one file, keys whose type or value differ, and tensors whose type, shape
or bytes differ (with the largest difference in units in the last place for F32 tensors).
Exit code 0 always: this reports, it does not judge.
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader


def compare(path_a: str, path_b: str) -> None:
    a, b = GGUFReader(path_a), GGUFReader(path_b)
    fa = {k: f for k, f in a.fields.items() if not k.startswith("GGUF.")}
    fb = {k: f for k, f in b.fields.items() if not k.startswith("GGUF.")}
    print(
        f"keys: {len(fa)} vs {len(fb)}; only first: {sorted(set(fa) - set(fb))}; "
        f"only second: {sorted(set(fb) - set(fa))}"
    )
    for key in sorted(fa.keys() & fb.keys()):
        va, vb = fa[key].contents(), fb[key].contents()
        if fa[key].types != fb[key].types or va != vb:
            print(f"  key differs: {key}: {str(va)[:60]!r} vs {str(vb)[:60]!r}")
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    same = 0
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            print(
                f"  tensor differs: {name}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}"
            )
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            note = ""
            if x.tensor_type.name == "F32":  # how many representable floats apart
                ulps = np.abs(np.asarray(x.data).view(np.int32).astype(np.int64) - np.asarray(y.data).view(np.int32))
                note = f" (max {ulps.max()} ulp)"
            print(f"  tensor bytes differ: {name}{note}")
        else:
            same += 1
    print(
        f"tensors: {len(ta)} vs {len(tb)}; byte-identical: {same}; only first: {sorted(set(ta) - set(tb))[:5]}; "
        f"only second: {sorted(set(tb) - set(ta))[:5]}"
    )


if __name__ == "__main__":
    compare(sys.argv[1], sys.argv[2])

"""The build's manifest: 0.1.0 build directories resume, the JSON round-trips, malformed fields are one line;
option errors and hub errors have their own types.

tests/data/manifest-0.1.0.json was written by minicpmv-gguf 0.1.0 (commit 67b0a19, before the records were
dataclasses): build(tiny k-quant checkpoint, modes=("16x", "4x"), keep_unquantized=True), then verify's record.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

import pytest

from minicpmv_gguf.errors import ManifestError, OptionError, OutputError, SourceError
from minicpmv_gguf.pipeline import MANIFEST, Manifest, build, fingerprint, load_manifest
from minicpmv_gguf.pipeline.stages import MMPROJ_OUTTYPES
from tests.helpers import run_cli, tree_digest
from tests.test_build import snapshot, statuses

V010 = Path(__file__).parent / "data" / "manifest-0.1.0.json"
V010_OPTIONS = dict(
    modes=("16x", "4x"), keep_unquantized=True, mmproj_outtype="f16"
)  # what 0.1.0 was asked for (its default mmproj type)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layout(x):
    """Keys, nesting and JSON types, without the values."""
    if isinstance(x, dict):
        return {k: layout(v) for k, v in x.items()}
    if isinstance(x, list):
        return [layout(v) for v in x]
    return type(x).__name__


def repin(old: dict, out: Path, ckpt: Path, tools: dict) -> dict:
    """The 0.1.0 manifest, its layout untouched, with this run's checkpoint path, tool versions and file bytes.

    Its values come from the machine that wrote it; the checkpoint and the outputs it describes are this run's.
    """
    swap = {old["source"]["path"]: str(ckpt.resolve()), old["source"]["fingerprint"]: fingerprint(ckpt)[0]}
    swap.update({r["sha256"]: sha256(out / name) for name, r in old["files"].items()})

    def walk(x, key=None):
        if key == "tools":
            return {k: tools[k] for k in x}
        if isinstance(x, dict):
            return {k: walk(v, k) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return swap.get(x, x)

    new = walk(old)
    for name, record in new["files"].items():
        record["size"] = (out / name).stat().st_size
    for name, record in new["source"]["files"].items():
        record.update(size=(ckpt / name).stat().st_size, mtime_ns=(ckpt / name).stat().st_mtime_ns)
    return new


def test_the_0_1_0_manifest_round_trips_exactly():
    old = json.loads(V010.read_text())
    assert json.dumps(Manifest.from_json(old, V010).to_json()) == json.dumps(old)  # key order included


def test_a_build_directory_of_0_1_0_resumes(tiny_ckpt_kquant, tmp_path):
    out = tmp_path / "out"
    build(tiny_ckpt_kquant, out, threads=2, **V010_OPTIONS)
    fresh, old = json.loads((out / MANIFEST).read_text()), json.loads(V010.read_text())
    # What this version writes has 0.1.0's layout: 0.1.0 can read it too.
    assert layout(fresh) == layout({k: v for k, v in old.items() if k != "verify"})

    pinned = repin(old, out, tiny_ckpt_kquant, fresh["tools"])
    (out / MANIFEST).write_text(json.dumps(pinned, indent=2))
    before = snapshot(out)
    result = build(tiny_ckpt_kquant, out, threads=2, **V010_OPTIONS)
    assert statuses(result) == {
        "check": "ran",
        "convert": "skipped",
        "quantize": "skipped",
        "mmproj-16x": "skipped",
        "mmproj-4x": "skipped",
        "ollama": "skipped",
    }
    assert snapshot(out) == before and not result.removed
    after = json.loads((out / MANIFEST).read_text())
    # The 0.1.0 records are carried over as they were, verify's too: it still describes these very files.
    assert {k: v for k, v in after.items() if k != "updated"} == {k: v for k, v in pinned.items() if k != "updated"}


DROP = object()
MALFORMED = [  # (the field, its new value or DROP, the problem the error names)
    (("files", "lm-Q4_K_M.gguf", "size"), "big", 'files["lm-Q4_K_M.gguf"].size: expected an integer, got "big"'),
    (("options", "modes"), DROP, "options.modes: missing"),
    (("options", "keep_unquantized"), "yes", 'options.keep_unquantized: expected true or false, got "yes"'),
    (
        ("stages", "convert", "outputs"),
        "lm.gguf",
        'stages["convert"].outputs: expected a list of strings, got "lm.gguf"',
    ),
    (("stages", "ollama", "seconds"), "1 s", 'stages["ollama"].seconds: expected a number, got "1 s"'),
    (("source",), [], "source: expected an object, got []"),
    (("source", "repo_id"), 7, "source.repo_id: expected a string, got 7"),
    (
        ("files", "mmproj-4x.gguf", "tensor_types", "F16"),
        2.5,
        'files["mmproj-4x.gguf"].tensor_types["F16"]: expected an integer, got 2.5',
    ),
    (("verify", "files", "lm-F32.gguf"), 1, 'verify.files["lm-F32.gguf"]: expected a string, got 1'),
    (("tools",), DROP, "tools: missing"),
    (("created",), None, "created: is null"),
]


def changed(manifest: dict, keys: tuple[str, ...], value) -> dict:
    bad = copy.deepcopy(manifest)
    *parents, last = keys
    target = functools.reduce(dict.__getitem__, parents, bad)
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return bad


def test_a_malformed_manifest_is_one_line_naming_the_field(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    v010 = json.loads(V010.read_text())
    for keys, value, problem in MALFORMED:
        (out / MANIFEST).write_text(json.dumps(changed(v010, keys, value)))
        digest = tree_digest(out)
        with pytest.raises(ManifestError) as err:
            build(tiny_ckpt, out)
        assert str(err.value) == f"{out / MANIFEST}: {problem}; use --force to rebuild"
        assert isinstance(err.value, OutputError) and tree_digest(out) == digest
    (out / MANIFEST).write_text("{")
    with pytest.raises(ManifestError, match=r"manifest.json: not a readable build manifest \(Expecting"):
        load_manifest(out)

    r = run_cli("build", tiny_ckpt, "-o", out)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith(f"Error: {out / MANIFEST}: ")
    build(tiny_ckpt, out, quant="F16", ollama=False, force=True)  # --force replaces it
    assert load_manifest(out).options.quant == "F16"


def test_option_errors_have_their_own_type(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    cases = [
        (dict(modes=("8x",)), "modes 8x: choose 16x, 4x or 16x,4x"),
        (dict(modes=()), "modes (none): choose 16x, 4x or 16x,4x"),
        (dict(lm_outtype="q8_0"), "LM outtype 'q8_0': choose one of auto, f32, f16, bf16"),
        (dict(mmproj_outtype="q3_k"), "mmproj outtype 'q3_k': choose one of " + ", ".join(MMPROJ_OUTTYPES)),
    ]
    for kwargs, message in cases:
        with pytest.raises(OptionError) as err:
            build(tiny_ckpt, out, **kwargs)
        assert str(err.value) == message
    r = run_cli("build", tiny_ckpt, "-o", out, "--modes", "16x,8x")
    assert (r.returncode, r.stderr) == (1, "Error: modes 16x,8x: choose 16x, 4x or 16x,4x\n")
    assert not out.exists()


def _hub_error(cls, message: str):
    """A huggingface_hub error without the HTTP response its constructor wants."""
    err = cls.__new__(cls)
    err.args = (message,)
    return err


def test_hub_errors_are_one_line_and_other_errors_are_not_hidden(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import errors

    out = tmp_path / "out"
    with pytest.raises(SourceError) as err:  # refused by huggingface_hub itself, before any network
        build("bad--name/x", out)
    assert str(err.value).startswith("bad--name/x: cannot download it from the Hugging Face hub: Cannot have -- or ..")

    raised = []

    def snapshot_download(*args, **kwargs):
        raise raised[-1]

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    for error in (
        _hub_error(errors.GatedRepoError, "403 Forbidden: tiny/gated is gated.\nVisit its page to ask for access."),
        _hub_error(errors.RepositoryNotFoundError, "404 Client Error.\n\nRepository Not Found for url: x"),
        _hub_error(errors.RevisionNotFoundError, "404 Client Error.\n\nRevision Not Found for url: x"),
        errors.HTTPError("connection reset by peer"),
        OSError(28, "No space left on device"),
    ):
        raised.append(error)
        with pytest.raises(SourceError) as err:
            build("tiny/gated", out)
        first = str(error).strip().splitlines()[0]
        assert str(err.value) == f"tiny/gated: cannot download it from the Hugging Face hub: {first}"
    raised.append(TypeError("a bug in the toolkit"))
    with pytest.raises(TypeError, match="a bug in the toolkit"):
        build("tiny/gated", out)
    assert not out.exists()

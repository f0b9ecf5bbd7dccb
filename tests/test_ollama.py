"""Ollama packaging: the Modelfile's TEMPLATE run by Go's text/template (Ollama's engine) against the
model's own Jinja chat template, the Modelfile checker against Ollama's rules, and the CLI as a user runs it.

tests/data/released_chat_template.jinja is chat_template.jinja of the released MiniCPM-V 4.6
checkpoint (openbmb/MiniCPM-V-4.6), copied unchanged. The Go renderer is tests/ollama_template/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from minicpmv_gguf.errors import GGUFError, OllamaError, OutputError
from minicpmv_gguf.gguf_io import read_metadata
from minicpmv_gguf.ollama import CHAT_TEMPLATE, check_modelfile, classify_gguf, package_ollama, parse_modelfile
from minicpmv_gguf.ollama import modelfile as modelfile_module
from tests.helpers import run_cli

HERE = Path(__file__).parent
RELEASED_TEMPLATE = HERE / "data" / "released_chat_template.jinja"
NO_THINKING = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture(scope="session")
def tiny_lm(tiny_ckpt, convert_cached) -> Path:
    return convert_cached(tiny_ckpt, "f32")


@pytest.fixture(scope="session")
def tiny_mmproj(tiny_ckpt, tmp_path_factory) -> Path:
    from minicpmv_gguf.mmproj import convert_mmproj

    return convert_mmproj(tiny_ckpt, tmp_path_factory.mktemp("mmproj") / "mmproj-16x.gguf", mode="16x").out


@pytest.fixture(scope="session")
def package(tiny_lm, tiny_mmproj, tmp_path_factory):
    return package_ollama(tiny_lm, tiny_mmproj, tmp_path_factory.mktemp("ollama") / "minicpm-v4.6")


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """render(template, messages, system=, think=) -> the prompt, from tests/ollama_template built once."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "Go is not installed: this test runs the Modelfile TEMPLATE through Go's text/template, the "
            "engine Ollama uses. Install it with `apt-get install golang-go` (scripts/test.sh does).",
            pytrace=False,
        )
    tmp = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
        "GOCACHE": str(tmp / "cache"),
        "GOPATH": str(tmp / "gopath"),
    }
    exe = tmp / "ollama_template"
    build = subprocess.run(
        [go, "build", "-o", str(exe), "."],
        cwd=HERE / "ollama_template",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr

    def render(template: str, messages: list[dict], *, system: str = "", think: bool | None = None) -> str:
        request = {"template": template, "messages": messages, "system": system, "think": think}
        run = subprocess.run([str(exe)], input=json.dumps(request), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return run.stdout

    return render


def jinja_prompt(template: str, messages: list[dict]) -> str:
    """The prompt as llama-cpp-python's Jinja2ChatFormatter renders it, with thinking off."""

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, enable_thinking=False, bos_token="", eos_token="<|im_end|>"
    )


@pytest.fixture(scope="session")
def jinja_templates(tiny_lm) -> dict[str, str]:
    return {
        "tiny LM GGUF": read_metadata(tiny_lm)[0]["tokenizer.chat_template"],
        "released checkpoint": RELEASED_TEMPLATE.read_text(encoding="utf-8"),
    }


def _m(role: str, content: str, images: int = 0) -> dict:
    return {"role": role, "content": content, **({"images": images} if images else {})}


@dataclass(frozen=True)
class Conversation:
    """A chat request as Ollama receives it, and the messages the model's Jinja template sees for it."""

    request: list[dict]
    jinja: list[dict]
    system: str = ""  # the Modelfile's SYSTEM
    think: bool | None = None
    prefill: bool = False  # ends with an assistant prefill: llama-server renders the rest, then appends its text


SYSTEM = "You are MiniCPM-V, a helpful assistant made by OpenBMB."
TEXT = 'First line.\nSecond line,\n\n    indented\tand "quoted", {{ .Role }} {% if %} <b>naïve 你好 🙂</b>'
CONVERSATIONS = {
    "one user turn": Conversation([_m("user", "What is in this picture?")], [_m("user", "What is in this picture?")]),
    "system and user": Conversation(
        [_m("system", SYSTEM), _m("user", "Hi!")], [_m("system", SYSTEM), _m("user", "Hi!")]
    ),
    "Modelfile SYSTEM": Conversation([_m("user", "Hi!")], [_m("system", SYSTEM), _m("user", "Hi!")], system=SYSTEM),
    "several turns": Conversation(
        [
            _m("system", SYSTEM),
            _m("user", "Hello."),
            _m("assistant", "Hello! How can I help?"),
            _m("user", "Name a fruit."),
            _m("assistant", "An apple."),
            _m("user", "And a colour?"),
        ],
        [
            _m("system", SYSTEM),
            _m("user", "Hello."),
            _m("assistant", "Hello! How can I help?"),
            _m("user", "Name a fruit."),
            _m("assistant", "An apple."),
            _m("user", "And a colour?"),
        ],
    ),
    "multi-line text, braces, quotes, unicode": Conversation(
        [_m("user", TEXT), _m("assistant", TEXT), _m("user", TEXT)],
        [_m("user", TEXT), _m("assistant", TEXT), _m("user", TEXT)],
    ),
    "an image, marked where Ollama puts it": Conversation(
        [_m("user", "What is this?", images=1)], [_m("user", "[img-0]What is this?")]
    ),
    "images over turns, one placed with [img]": Conversation(
        [
            _m("user", "Describe it.", images=1),
            _m("assistant", "A cat on a mat."),
            _m("user", "Compare [img] with the first one.", images=2),
        ],
        [
            _m("user", "[img-0]Describe it."),
            _m("assistant", "A cat on a mat."),
            _m("user", "[img-2]Compare [img-1] with the first one."),
        ],
    ),
    "think false sent": Conversation([_m("user", "Hi!")], [_m("user", "Hi!")], think=False),
    "assistant prefill": Conversation(
        [_m("user", "Name a colour."), _m("assistant", "The colour is")],
        [_m("user", "Name a colour."), _m("assistant", "The colour is")],
        prefill=True,
    ),
}


@pytest.fixture(scope="session")
def packaged_template(package) -> str:
    """The TEMPLATE as Ollama reads it back from the written Modelfile."""
    [template] = [c.value for c in parse_modelfile(package.modelfile.read_text()) if c.instruction == "template"]
    return template


@pytest.mark.parametrize("source", ["tiny LM GGUF", "released checkpoint"])
@pytest.mark.parametrize("case", CONVERSATIONS)
def test_template_gives_the_jinja_prompt(source, case, go_render, packaged_template, jinja_templates):
    c = CONVERSATIONS[case]
    got = go_render(packaged_template, c.request, system=c.system, think=c.think)
    jinja = jinja_templates[source]
    want = jinja_prompt(jinja, c.jinja[:-1]) + c.jinja[-1]["content"] if c.prefill else jinja_prompt(jinja, c.jinja)
    assert got == want


@pytest.mark.parametrize("source", ["tiny LM GGUF", "released checkpoint"])
def test_jinja_side_is_in_non_thinking_mode(source, jinja_templates):
    assert jinja_prompt(jinja_templates[source], [_m("user", "Hi!")]).endswith(NO_THINKING)


def test_modelfile_holds_the_template_with_its_newlines(packaged_template):
    assert packaged_template == CHAT_TEMPLATE
    assert "<|im_end|>\n" in packaged_template and "<|im_start|>{{ .Role }}\n" in packaged_template
    # Ollama turns thinking on by default for a Go template that reads .Thinking; tools need .Tools.
    assert ".Thinking" not in packaged_template and ".Tools" not in packaged_template


def test_modelfile_instructions(package, tiny_lm, tiny_mmproj):
    commands = [(c.instruction, c.key, c.value) for c in parse_modelfile(package.modelfile.read_text())]
    assert commands == [
        ("from", "", f"./{tiny_lm.name}"),
        ("from", "", f"./{tiny_mmproj.name}"),
        ("requires", "", "0.30.0"),
        ("template", "", CHAT_TEMPLATE),
        ("parameter", "stop", "<|im_end|>"),
        ("parameter", "stop", "<|endoftext|>"),
        ("parameter", "temperature", "0.7"),
        ("parameter", "top_p", "0.8"),
        ("parameter", "top_k", "100"),
        ("parameter", "repeat_penalty", "1.05"),
        ("parameter", "num_ctx", "4096"),
        ("license", "", "apache-2.0"),
    ]
    assert (package.out / tiny_lm.name).read_bytes() == tiny_lm.read_bytes()
    assert (package.out / tiny_mmproj.name).read_bytes() == tiny_mmproj.read_bytes()


def test_system_num_ctx_and_links(tiny_lm, tiny_mmproj, tmp_path):
    pkg = package_ollama(
        tiny_lm, tiny_mmproj, tmp_path / "pkg", system="  Answer briefly.\nIn English.  ", num_ctx=8192, link=True
    )
    commands = {(c.instruction, c.key): c.value for c in parse_modelfile(pkg.modelfile.read_text())}
    assert commands[("system", "")] == "Answer briefly.\nIn English."  # trimmed, as the model's template trims
    assert commands[("parameter", "num_ctx")] == "8192"
    assert pkg.placed == ("hard-linked", "hard-linked")
    assert os.path.samefile(pkg.out / tiny_lm.name, tiny_lm)
    assert check_modelfile(pkg.modelfile) == []


def test_the_checker_accepts_what_the_packager_writes(package):
    assert check_modelfile(package.modelfile) == []
    kinds = {p.name: classify_gguf(p).kind for p in package.out.glob("*.gguf")}
    assert sorted(kinds.values()) == ["model", "projector"]


def test_parser_reads_values_as_ollama_does():
    text = (
        "# a comment\n"
        "from ./lm.gguf\n"
        'TEMPLATE """line 1\n\n  line 3 "quoted"\n"""\n'
        'SYSTEM "one line"\n'
        "LICENSE bare words  \n"
        'PARAMETER stop "<|im_end|>"\n'
        "MESSAGE user hello there\n"
        'PARAMETER stop ["<|im_start|>", "<|im_end|>"]\n'
    )
    assert [(c.instruction, c.key, c.value, c.line) for c in parse_modelfile(text)] == [
        ("from", "", "./lm.gguf", 2),
        ("template", "", 'line 1\n\n  line 3 "quoted"\n', 3),
        ("system", "", "one line", 7),
        ("license", "", "bare words", 8),
        ("parameter", "stop", "<|im_end|>", 9),
        ("message", "user", "hello there", 10),
        # OpenBMB's published form: Ollama keeps the bracket as one literal stop string.
        ("parameter", "stop", '["<|im_start|>", "<|im_end|>"]', 11),
    ]


@pytest.fixture(scope="session")
def files_dir(package, tmp_path_factory) -> Path:
    """A folder with the package's GGUFs, a copy of each, and a text file."""
    d = tmp_path_factory.mktemp("modelfiles")
    lm, mm = package.out / package.lm_file, package.out / package.mmproj_file
    for src, names in ((lm, ("lm.gguf", "lm-copy.gguf")), (mm, ("mm.gguf", "mm-copy.gguf"))):
        for n in names:
            shutil.copyfile(src, d / n)
    (d / "notes.txt").write_text("not a model\n")
    return d


BASE = "FROM ./lm.gguf\nFROM ./mm.gguf\n"
BAD_MODELFILES = {  # Modelfile text, expected line, words of the message
    "unknown instruction": ("FORM ./lm.gguf\n", 1, "unknown instruction 'FORM'"),
    "unknown parameter": (BASE + "PARAMETER temprature 0.7\n", 3, "unknown parameter 'temprature'"),
    "int with a fraction": (BASE + "PARAMETER num_ctx 4096.5\n", 3, "invalid int value"),
    "comment after a value": (BASE + "PARAMETER num_ctx 4096  # the context\n", 3, "invalid int value"),
    "word for a float": (BASE + "PARAMETER temperature warm\n", 3, "invalid float value"),
    "float32 overflow": (BASE + "PARAMETER top_p 1e39\n", 3, "invalid float value"),
    "word for a bool": (BASE + "PARAMETER use_mmap maybe\n", 3, "invalid bool value"),
    'unterminated """': (BASE + 'TEMPLATE """{{ .Prompt }}\nPARAMETER top_k 1\n', 3, 'opened with """ is never closed'),
    'unterminated "': (BASE + 'SYSTEM "You are\nhelpful\n', 3, 'opened with " is never closed'),
    "instruction without a value": (BASE + "SYSTEM\n", 3, "SYSTEM needs a value"),
    "bad MESSAGE role": (BASE + "MESSAGE robot hello\n", 3, "MESSAGE role 'robot'"),
    "bad REQUIRES": (BASE + "REQUIRES latest\n", 3, "not a version"),
    "no FROM": ("SYSTEM hi\n", 1, "no FROM line"),
    "missing FROM file": ("FROM ./missing.gguf\nFROM ./mm.gguf\n", 1, "./missing.gguf: no such file"),
    "not a GGUF": ("FROM ./lm.gguf\nFROM ./notes.txt\n", 2, "not a readable GGUF"),
    "two model files": ("FROM ./lm.gguf\nFROM ./lm-copy.gguf\nFROM ./mm.gguf\n", 2, "2 model GGUFs"),
    "two projectors": (BASE + "FROM ./mm-copy.gguf\n", 3, "2 projector GGUFs"),
    "a projector alone": ("FROM ./mm.gguf\n", 1, "is a projector but no FROM names a model GGUF"),
}


@pytest.mark.parametrize("case", BAD_MODELFILES)
def test_the_checker_rejects(case, files_dir):
    text, line, words = BAD_MODELFILES[case]
    path = files_dir / ("Modelfile-" + re.sub(r"\W+", "-", case))
    path.write_text(text)
    errors = [p for p in check_modelfile(path) if not p.warning]
    assert any(words in p.message and p.line == line for p in errors), errors


@pytest.mark.parametrize(
    "line, ok",
    [
        ("PARAMETER temperature 0.7", True),
        ("PARAMETER top_p .5", True),
        ("PARAMETER top_p 0x1p-2", True),
        ("PARAMETER top_p 1_0", False),
        ("PARAMETER temperature 1e39", False),
        ("PARAMETER num_ctx +8192", True),
        ("PARAMETER seed 9223372036854775808", False),
        ("PARAMETER use_mmap False", True),
        ("PARAMETER use_mmap yes", False),
        ('PARAMETER stop ""', True),
        ("REQUIRES v0.30", True),
        ("REQUIRES 0.30.0-rc1", True),
        ("REQUIRES 0.30.0-01", False),
        ("REQUIRES 00.30.0", False),
    ],
)
def test_values_parse_as_go_parses_them(line, ok, files_dir):
    path = files_dir / "Modelfile-values"
    path.write_text(f"{BASE}{line}\n")
    assert (check_modelfile(path) == []) == ok


@pytest.mark.parametrize("line", ["PARAMETER mirostat 1", 'PARAMETER stop ["<|im_start|>", "<|im_end|>"]'])
def test_deprecated_or_suspicious_parameters_are_warnings(line, files_dir):
    path = files_dir / "Modelfile-warning"
    path.write_text(f"{BASE}{line}\n")
    problems = check_modelfile(path)
    assert len(problems) == 1 and problems[0].warning and problems[0].line == 3


@pytest.mark.parametrize("case", ["swapped", "two LMs", "not a GGUF", "missing", "bad name", "unwritable SYSTEM"])
def test_packager_refuses_bad_input(case, tiny_lm, tiny_mmproj, tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    lm, mm, name, system = {
        "swapped": (tiny_mmproj, tiny_lm, "m", None),
        "two LMs": (tiny_lm, tiny_lm, "m", None),
        "not a GGUF": (tiny_lm, notes, "m", None),
        "missing": (tmp_path / "no.gguf", tiny_mmproj, "m", None),
        "bad name": (tiny_lm, tiny_mmproj, "my model; rm -rf ~", None),
        "unwritable SYSTEM": (tiny_lm, tiny_mmproj, "m", 'Say """\nthen stop.'),
    }[case]
    with pytest.raises((OllamaError, GGUFError)):
        package_ollama(lm, mm, tmp_path / "pkg", name=name, system=system)
    notes.unlink()
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".*"))


def test_a_failed_write_leaves_nothing(tiny_lm, tiny_mmproj, tmp_path, monkeypatch):
    copies, real_copyfile = [], shutil.copyfile

    def copyfile(src, dst):  # the first GGUF is copied, the disk is full for the second
        copies.append(dst)
        if len(copies) == 2:
            raise OSError(28, "No space left on device")
        real_copyfile(src, dst)

    monkeypatch.setattr(modelfile_module.shutil, "copyfile", copyfile)
    with pytest.raises(OutputError, match="No space left"):
        package_ollama(tiny_lm, tiny_mmproj, tmp_path / "pkg")
    assert len(copies) == 2 and list(tmp_path.iterdir()) == []


def test_replacing_needs_force_and_never_deletes_the_inputs(tiny_lm, tiny_mmproj, tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="--force"):
        package_ollama(tiny_lm, tiny_mmproj, out)
    package_ollama(tiny_lm, tiny_mmproj, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "Modelfile").is_file()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for src in (tiny_lm, tiny_mmproj):
        shutil.copyfile(src, inputs / src.name)
    with pytest.raises(OutputError, match="holds the input GGUFs"):
        package_ollama(inputs / tiny_lm.name, inputs / tiny_mmproj.name, inputs, overwrite=True)
    assert sorted(p.name for p in inputs.iterdir()) == sorted([tiny_lm.name, tiny_mmproj.name])


def test_cli_packages_then_checks(tiny_lm, tiny_mmproj, tmp_path):
    out = tmp_path / "minicpm"
    r = run_cli("ollama", tiny_lm, "--mmproj", tiny_mmproj, "-o", out, "--name", "me/minicpm-v4.6:tiny")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}/: Modelfile, ")
    assert r.stdout.splitlines()[-1] == f"  ollama create me/minicpm-v4.6:tiny -f {out}/Modelfile"
    r = run_cli("ollama", "--check", out)
    assert r.returncode == 0 and r.stdout == f"{out}/Modelfile: Ollama accepts it\n", r.stdout + r.stderr


def test_cli_check_prints_one_line_per_problem(files_dir):
    path = files_dir / "Modelfile-cli"
    path.write_text(BASE + "PARAMETER temprature 0.7\nPARAMETER num_ctx many\n")
    r = run_cli("ollama", "--check", path)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{path}:3: unknown parameter 'temprature'",
        f"{path}:4: PARAMETER num_ctx 'many': invalid int value",
    ]


def test_cli_bad_input_is_one_error_line_and_leaves_nothing(tiny_lm, tiny_mmproj, tmp_path):
    r = run_cli("ollama", tiny_mmproj, "--mmproj", tiny_lm, "-o", tmp_path / "pkg")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"Error: {tiny_mmproj} is the projector and {tiny_lm} the LM: swap them (LM first, then --mmproj)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_cli_usage_errors(tiny_lm, tmp_path):
    assert run_cli("ollama", tiny_lm).returncode == 2
    assert run_cli("ollama", tiny_lm, "--check", tmp_path / "Modelfile").returncode == 2

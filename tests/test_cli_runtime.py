"""`minicpmv-gguf run` and `chat` driven as a user drives them: a subprocess, arguments, stdin, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import run_cli
from tests.runtime_cases import BAD_INPUTS, N_THREADS, QUESTION

STATS = re.compile(r"\[(\w+)\] (\d+) prompt tokens \((\d+) image, (\d+) cached\), (\d+) generated")


def model_args(files, *mmprojs) -> list:
    args = [files.lm, "--threads", N_THREADS]
    for m in mmprojs or (files.mm16, files.mm4):
        args += ["--mmproj", m]
    return args


def test_run_streams_the_answer_about_an_image(tiny_files):
    r = run_cli(
        "run", *model_args(tiny_files), "--image", tiny_files.image_a, "-p", QUESTION, "--max-tokens", 8, "--seed", 1
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and r.stdout.endswith("\n")
    assert re.search(r"\d+ prompt tokens \(4 image, 0 cached\), 8 generated; encode [\d.]+ s", r.stderr), r.stderr


def test_run_json_with_high_detail_is_the_api_reply(tiny_files):
    from minicpmv_gguf.runtime import Sampling, open_model

    r = run_cli(
        "run",
        *model_args(tiny_files),
        "--image",
        tiny_files.image_c,
        "-p",
        QUESTION,
        "--detail",
        "high",
        "--temperature",
        0,
        "--max-tokens",
        12,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    t = out["timings"]
    assert out["mode"] == "4x" and out["stop_reason"] in ("eos", "max_tokens") and out["reasoning"] is None
    assert t["generated_tokens"] == len(out["token_ids"]) and t["prompt_tokens"] == t["text_tokens"] + t["image_tokens"]
    assert t["total_s"] == pytest.approx(t["encode_s"] + t["prefill_s"] + t["decode_s"], abs=1e-6)
    with open_model(tiny_files.lm, [tiny_files.mm16, tiny_files.mm4], threads=N_THREADS) as model:
        with model.chat(detail="high", sampling=Sampling(temperature=0), max_tokens=12) as chat:
            assert list(chat.send(QUESTION, [tiny_files.image_c]).token_ids) == out["token_ids"]


def test_run_with_an_animated_gif_as_video(tiny_files):
    r = run_cli(
        "run", *model_args(tiny_files), "--video", tiny_files.gif, "-p", "What happens?", "--max-tokens", 2, "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["timings"]["image_tokens"] == 3 * 4  # 3 frames (1 fps over 2.5 s) x 4 tokens


def test_chat_over_stdin_with_an_image_a_second_turn_and_a_reset(tiny_files):
    lines = [f"/image {tiny_files.image_a}", QUESTION, "And the colours?", "/reset", "Hello!", "/quit", "never asked"]
    r = run_cli("chat", *model_args(tiny_files), "--stats", "--max-tokens", 6, stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    turns = [tuple(int(x) for x in m.groups()[1:]) for m in STATS.finditer(r.stderr)]
    assert len(turns) == 3, r.stderr  # "never asked" comes after /quit
    (p1, img1, cached1, _), (p2, img2, cached2, _), (p3, img3, cached3, _) = turns
    assert img1 == 4 and cached1 == 0  # the 112x112 image, 16x
    assert img2 == 4 and 0 < cached2 < p2  # same conversation: image and turn 1 kept in memory
    assert img3 == 0 and cached3 == 0 and p3 < p1  # after /reset
    assert "(new conversation)" in r.stderr and r.stdout.count("\n") >= 3


def test_chat_reports_a_bad_command_and_goes_on(tiny_files):
    lines = ["/image /nonexistent/cat.jpg", "/frobnicate", QUESTION]
    r = run_cli("chat", *model_args(tiny_files), "--stats", "--max-tokens", 2, stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert "error: /nonexistent/cat.jpg: image not found" in r.stderr and "/reset" in r.stderr
    assert len(STATS.findall(r.stderr)) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux pipe sizes and FIONREAD")
def test_ctrl_c_stops_the_answer_not_the_chat(tiny_files):
    """SIGINT while an answer is being written. The tiny model answers in milliseconds, so the chat's
    stdout is a pipe kept nearly full: the chat blocks mid-answer, and Ctrl-C lands there."""
    import array
    import fcntl
    import termios
    import threading

    read_end, write_end = os.pipe()
    size = fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe
    os.write(write_end, b"x" * (size - 256))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minicpmv_gguf.cli",
            "chat",
            *map(str, model_args(tiny_files)),
            "--stats",
            "--temperature",
            "0",
            "--max-tokens",
            "3000",
        ],
        stdin=subprocess.PIPE,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    drained = []
    try:
        proc.stdin.write("Tell me a very long story.\n")  # greedy: ~500 tokens, far more than 256 bytes
        proc.stdin.flush()
        levels, deadline = [size - 256], time.monotonic() + 60
        # the answer fills the last 256 bytes, then the chat blocks: the level rises, then stays put
        while (levels[-1] == size - 256 or len(set(levels[-10:])) > 1) and time.monotonic() < deadline:
            time.sleep(0.02)
            level = array.array("i", [0])
            fcntl.ioctl(read_end, termios.FIONREAD, level)
            levels.append(level[0])
        os.kill(proc.pid, signal.SIGINT)
        threading.Thread(
            target=lambda: drained.append(b"".join(iter(lambda: os.read(read_end, 65536), b""))), daemon=True
        ).start()
        _, err = proc.communicate("Hello!\n/quit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    stops = [m.group(1) for m in STATS.finditer(err)]
    assert stops[0] == "interrupted" and len(stops) == 2 and "(stopped)" in err, err


def cli_args(case, files, bad) -> list:
    c = case.resolve(files, bad)
    args = ["run", c["lm"], "--threads", 1, "--ctx", c["n_ctx"], "-p", c["text"], "--max-tokens", 2]
    args += [x for m in c["mmproj"] for x in ("--mmproj", m)] + [x for i in c["images"] for x in ("--image", i)]
    args += ["--video", c["video"]] if c["video"] else []
    return args + (["--detail", c["detail"]] if c["detail"] else [])


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_exit_1(case, tiny_files, bad_files):
    r = run_cli(*cli_args(case, tiny_files, bad_files))
    assert r.returncode == 1, f"exit {r.returncode} (negative = killed by a signal)\n{r.stderr[-2000:]}"
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1 and case.words in r.stderr, r.stderr
    assert r.stdout == ""

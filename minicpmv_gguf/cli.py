"""The `minicpmv-gguf` command line: thin click commands over the library functions."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__, spec
from .errors import ToolkitError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ToolkitError as err:  # user-fixable: one line, no traceback
            raise click.ClickException(str(err)) from err
        except KeyboardInterrupt:
            click.echo("interrupted; no output was left under its final name", err=True)
            sys.exit(130)
        except MemoryError as err:  # one line too; outputs are cleaned up as for any other error
            raise click.ClickException("out of memory (free some, or check the input for huge declared sizes)") from err


# tensor_plan.MMPROJ_OUTTYPES, named here so that `--help` needs no numpy (tests/test_package.py pins them equal)
MMPROJ_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl", "q6_k", "q5_k", "q4_k")
MMPROJ_TYPE_HELP = (
    "The mmproj's weight type. `build` writes q4_0: against f16, an image turn of the full-size model peaks "
    "with 40 % less memory and answers first no later when the mmproj is loaded for the turn (run, chat), "
    "about 7 % later when it stays loaded (serve); the trained tiny VLM gives its F32 answers to all but 3 of "
    "400 held-out questions. q8_0 is as fast as f16 with a quarter less memory; f16 (the `mmproj` default) "
    "and f32 are the lossless ones. Block types zero-pad the MLP width (exact). "
    "Measured: benchmarks/results/vision_quant_*.md."
)


def _mmproj_outtype_option(flag: str, default: str):
    """The mmproj weight type: one option for `mmproj --outtype` and `build --mmproj-outtype`."""
    return click.option(
        flag, type=click.Choice(["auto", *MMPROJ_OUTTYPES]), default=default, show_default=True, help=MMPROJ_TYPE_HELP
    )


def _lora_options(command):
    """--lora DIR (repeatable) and --lora-scale S (one for all, or one per --lora): PEFT adapters to merge."""
    command = click.option(
        "--lora-scale",
        "lora_scales",
        multiple=True,
        type=float,
        help="Scale of the adapter's delta (default 1.0); once for all adapters or once per --lora.",
    )(command)
    return click.option(
        "--lora",
        "loras",
        multiple=True,
        type=click.Path(path_type=Path),
        help="A PEFT LoRA adapter folder to merge into the weights (repeatable).",
    )(command)


def _open_loras(loras: tuple[Path, ...], scales: tuple[float, ...]):
    from .lora import open_adapter

    return [open_adapter(path, scale=scale) for path, scale in _lora_pairs(loras, scales)]


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="minicpmv-gguf")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """Convert, quantize, check and run MiniCPM-V 4.6 as GGUF files for llama.cpp on a CPU.

    The main path: build the GGUFs (LM, mmproj, Ollama package), chat about an image, hand it to Ollama.

    \b
        minicpmv-gguf build ./MiniCPM-V-4_6 -o minicpmv46
        minicpmv-gguf run minicpmv46/ --image cat.jpg -p "What is it?"
        minicpmv-gguf chat minicpmv46/
        minicpmv-gguf serve minicpmv46/     # OpenAI-compatible API, and a chat page at http://127.0.0.1:8080/
        ollama create minicpm-v4.6 -f minicpmv46/ollama/Modelfile

    Each step alone: convert (LM), mmproj (vision), lora (adapter GGUF), quantize, imatrix, eval, ollama, verify,
    inspect.
    """
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("minicpmv_gguf").setLevel(logging.DEBUG if verbose else logging.INFO)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The LM GGUF to write.")
@click.option(
    "--outtype",
    type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0"]),
    default="auto",
    show_default=True,
    help="auto keeps the checkpoint's own float type (lossless).",
)
@click.option("--dry-run", is_flag=True, help="Print the tensor plan; write nothing.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--name", help="general.name (default: the checkpoint directory's name).")
@click.option("--source-url", help="general.source.url (default: from config.json _name_or_path).")
@_lora_options
def convert(
    checkpoint: Path,
    out: Path,
    outtype: str,
    dry_run: bool,
    force: bool,
    name: str | None,
    source_url: str | None,
    loras: tuple[Path, ...],
    lora_scales: tuple[float, ...],
) -> None:
    """Write the language-model GGUF (qwen35) of a MiniCPM-V 4.6 checkpoint."""
    from .convert_hf_to_gguf import plan_lm, write_lm
    from .gguf_io import check_output

    if not dry_run:
        check_output(out, overwrite=force)  # fail before reading the checkpoint
    plan = plan_lm(checkpoint, outtype=outtype, loras=_open_loras(loras, lora_scales))
    if dry_run:
        for row in plan.rows:
            click.echo(f"{row.hf_name} -> {row.gguf_name}  {row.source_dtype} -> {row.ggml_type}  {list(row.shape)}")
        click.echo(plan.summary())
        return
    with click.progressbar(length=plan.n_bytes, label="writing tensors", file=sys.stderr) as bar:
        result = write_lm(
            plan, out, overwrite=force, name=name, source_url=source_url, progress=lambda n, _name: bar.update(n)
        )
    click.echo(result.summary())


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The mmproj GGUF to write; with --mode both, NAME-16x.gguf and NAME-4x.gguf.",
)
@click.option(
    "--mode",
    type=click.Choice([*spec.MODES, "both"]),
    default=spec.DEFAULT_MODE,
    show_default=True,
    help="Visual-token compression: 16x (fewer tokens, faster) or 4x (fine detail).",
)
@_mmproj_outtype_option("--outtype", spec.MMPROJ_TYPE)
@click.option("--dry-run", is_flag=True, help="Print the tensor plan; write nothing.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@_lora_options
def mmproj(
    checkpoint: Path,
    out: Path,
    mode: str,
    outtype: str,
    dry_run: bool,
    force: bool,
    loras: tuple[Path, ...],
    lora_scales: tuple[float, ...],
) -> None:
    """Write the mmproj (vision) GGUF of a MiniCPM-V 4.6 checkpoint, one file per mode."""
    from .gguf_io import check_output
    from .mmproj import MODES, mode_paths, plan_mmproj, write_mmproj

    paths = mode_paths(out, list(MODES) if mode == "both" else [mode])
    if not dry_run:
        for path in paths.values():
            check_output(path, overwrite=force)
    adapters = _open_loras(loras, lora_scales)
    plans = {m: plan_mmproj(checkpoint, mode=m, outtype=outtype, loras=adapters) for m in paths}  # all checked first
    for m, path in paths.items():
        plan = plans[m]
        if dry_run:
            for row in plan.rows:
                click.echo(
                    f"{row.hf_name} -> {row.gguf_name}  {row.source_dtype} -> {row.ggml_type}  {list(row.shape)}"
                )
            click.echo(plan.summary())
            continue
        with click.progressbar(length=plan.n_bytes, label=f"writing {m} mmproj", file=sys.stderr) as bar:
            result = write_mmproj(plan, path, overwrite=force, progress=lambda n, _name: bar.update(n))
        click.echo(result.summary())


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The quantized LM GGUF.")
@click.option(
    "--type",
    "qtype",
    default="Q4_K_M",
    show_default=True,
    help="A llama-quantize type: Q4_K_M, Q4_K_S, Q5_K_M, Q6_K, Q8_0, Q4_0, IQ4_XS, ...",
)
@click.option(
    "--recipe", help="A named recipe instead of --type: Q4_K_M-sensitive keeps attn_gate, attn_qkv and ssm_out at Q8_0."
)
@click.option(
    "--tensor-type",
    "tensor_types",
    multiple=True,
    metavar="PATTERN=TYPE",
    help="Override the type of tensors whose name matches PATTERN (a regex), e.g. attn_qkv=q8_0.",
)
@click.option("--imatrix", type=click.Path(path_type=Path), help="An importance matrix (llama.cpp imatrix GGUF).")
@click.option("--threads", type=int, help="Quantizer threads (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def quantize(
    src: Path,
    out: Path,
    qtype: str,
    recipe: str | None,
    tensor_types: tuple[str, ...],
    imatrix: Path | None,
    threads: int | None,
    force: bool,
) -> None:
    """Quantize an LM GGUF with llama.cpp's own quantizer (mmproj files: use `mmproj --outtype q8_0`)."""
    from .quantize import parse_overrides, quantize_lm

    click.echo(f"quantizing {src} ...", err=True)
    result = quantize_lm(
        src,
        out,
        qtype=qtype,
        recipe=recipe,
        tensor_types=parse_overrides(list(tensor_types)),
        imatrix=imatrix,
        threads=threads,
        overwrite=force,
    )
    click.echo(result.summary())


@cli.command()
@click.argument("lm", type=click.Path(path_type=Path))
@click.option("--text", required=True, type=click.Path(path_type=Path), help="Calibration text (UTF-8).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The imatrix GGUF to write.")
@click.option("--ctx", type=click.IntRange(min=2), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(min=1), help="Use at most N chunks (default: the whole text).")
@click.option("--threads", type=click.IntRange(min=1), help="llama.cpp threads (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def imatrix(lm: Path, text: Path, out: Path, ctx: int, chunks: int | None, threads: int | None, force: bool) -> None:
    """Compute an importance matrix of an LM GGUF from calibration text, for `quantize --imatrix`."""
    from .quantize.imatrix import compute_imatrix

    result = compute_imatrix(
        lm, text, out, ctx=ctx, max_chunks=chunks, threads=threads, overwrite=force, progress=_chunk_progress("imatrix")
    )
    click.echo(result.summary())


@cli.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--ref", required=True, type=click.Path(path_type=Path), help="The reference GGUF (e.g. the F16 one).")
@click.option("--text", required=True, type=click.Path(path_type=Path), help="Held-out text (UTF-8).")
@click.option("--ctx", type=click.IntRange(min=2), default=512, show_default=True, help="Tokens per chunk.")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Tokens decoded at a time; llama.cpp keeps 2 x batch x vocab floats per model.",
)
@click.option("--chunks", type=click.IntRange(min=1), help="Use at most N chunks (default: the whole text).")
@click.option("--threads", type=click.IntRange(min=1), help="llama.cpp threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def eval_(
    model: Path, ref: Path, text: Path, ctx: int, batch: int, chunks: int | None, threads: int | None, as_json: bool
) -> None:
    """What MODEL loses against REF on a text: KL divergence, top-1 agreement, perplexity, logit NMSE."""
    import json

    from .quantize.evaluate import evaluate

    result = evaluate(
        model, ref, text, ctx=ctx, batch=batch, max_chunks=chunks, threads=threads, progress=_chunk_progress("eval")
    )
    click.echo(json.dumps(result.as_dict()) if as_json else result.table())


def _chunk_progress(label: str):
    """A (done, total) progress callback that redraws one line on stderr."""
    return lambda done, total: click.echo(f"\r{label}: chunk {done}/{total}", err=True, nl=done == total)


@cli.command()
@click.argument("lm", required=False, type=click.Path(path_type=Path))
@click.option("--mmproj", type=click.Path(path_type=Path), help="The mmproj GGUF (one mode: 16x or 4x).")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="The package folder to write.")
@click.option("--name", default="minicpm-v4.6", show_default=True, help="The Ollama model name to create.")
@click.option("--link", is_flag=True, help="Hard-link the GGUFs (symlink across file systems) instead of copying.")
@click.option("--system", help="A default system prompt (Modelfile SYSTEM).")
@click.option(
    "--num-ctx", type=click.IntRange(min=1), default=spec.DEFAULT_N_CTX, show_default=True, help="Context length."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option(
    "--lora", "loras", multiple=True, type=click.Path(path_type=Path), help="A LoRA adapter GGUF: an ADAPTER line."
)
@click.option(
    "--check",
    type=click.Path(path_type=Path),
    metavar="MODELFILE",
    help="Check a Modelfile (or a package folder) against Ollama's rules instead; exit 1 on a problem.",
)
@click.pass_context
def ollama(
    ctx: click.Context,
    lm: Path | None,
    mmproj: Path | None,
    out: Path | None,
    name: str,
    link: bool,
    system: str | None,
    num_ctx: int,
    force: bool,
    loras: tuple[Path, ...],
    check: Path | None,
) -> None:
    """Package the LM and mmproj GGUFs for Ollama (>= 0.30), or check a Modelfile.

    \b
        minicpmv-gguf ollama lm-Q4_K_M.gguf --mmproj mmproj-16x.gguf -o minicpm-v4.6
        minicpmv-gguf ollama --check minicpm-v4.6/Modelfile
    """
    from .ollama import check_modelfile, package_ollama

    if check is not None:
        if lm or mmproj or out:
            raise click.UsageError("--check takes only a Modelfile; package and check in two runs")
        path = check / "Modelfile" if check.is_dir() else check
        problems = check_modelfile(path)
        for p in problems:
            click.echo(p.format(path))
        errors = [p for p in problems if not p.warning]
        if errors:
            ctx.exit(1)
        click.echo(f"{path}: Ollama accepts it")
        return
    if lm is not None and lm.is_dir():  # a build folder: its LM and its 16x mmproj (else the mode it has)
        from .pipeline.folder import build_files, gguf_paths

        gguf_paths(lm, (mmproj,) if mmproj else ())  # refuses --mmproj beside a folder
        files = build_files(lm)
        lm, mmproj = files.lm, files.mmprojs.get(spec.DEFAULT_MODE) or next(iter(files.mmprojs.values()), None)
    if not (lm and mmproj and out):
        raise click.UsageError("give LM (or a build folder), --mmproj and -o (or --check MODELFILE)")
    result = package_ollama(
        lm, mmproj, out, name=name, link=link, system=system, num_ctx=num_ctx, overwrite=force, adapters=loras
    )
    click.echo(result.summary())
    click.echo(f"create the model with:\n  {result.create_command()}")


def _chat_options(command):
    """Options shared by `run` and `chat`: the model files, the mode, sampling and sizes."""
    options = [
        click.argument("lm", metavar="BUILD_DIR|LM.gguf", type=click.Path(path_type=Path)),
        click.option(
            "--mmproj",
            "mmprojs",
            multiple=True,
            type=click.Path(path_type=Path),
            help="An mmproj GGUF; give the 16x and the 4x file to choose with --detail.",
        ),
        click.option(
            "--detail",
            type=click.Choice(list(spec.DETAIL_MODES)),
            default=None,
            help="normal: the 16x mmproj (default when given); high: the 4x mmproj (fine detail).",
        ),
        click.option(
            "--lora",
            "loras",
            multiple=True,
            type=click.Path(path_type=Path),
            help="A llama.cpp LoRA adapter GGUF (`minicpmv-gguf lora` writes one; repeatable).",
        ),
        click.option(
            "--lora-scale", "lora_scales", multiple=True, type=float, help="Adapter scale: once, or once per --lora."
        ),
        click.option("--think", is_flag=True, help="Thinking mode (enable_thinking); off by default."),
        click.option("--system", help="A system prompt."),
        click.option("--temperature", type=float, default=spec.TEMPERATURE, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=float, default=spec.TOP_P, show_default=True),
        click.option("--top-k", type=int, default=spec.TOP_K, show_default=True),
        click.option("--repeat-penalty", type=float, default=spec.REPEAT_PENALTY, show_default=True),
        click.option("--seed", type=int, help="Seed for reproducible sampling (default: random)."),
        click.option(
            "--max-tokens",
            type=click.IntRange(min=1),
            default=spec.DEFAULT_MAX_TOKENS,
            show_default=True,
            help="The longest reply, in tokens.",
        ),
        click.option(
            "--ctx",
            type=click.IntRange(min=16),
            default=spec.DEFAULT_N_CTX,
            show_default=True,
            help="Context length in tokens (the whole conversation, images included).",
        ),
        click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: the physical cores)."),
        click.option(
            "--max-frames",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="The most frames taken from a video (1 per second).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _lora_pairs(loras: tuple[Path, ...], scales: tuple[float, ...]) -> tuple[tuple[Path, float], ...]:
    """(adapter GGUF, scale) pairs from --lora and --lora-scale."""
    if scales and len(scales) not in (1, len(loras)):
        raise click.UsageError(f"give --lora-scale once or once per --lora ({len(loras)}), not {len(scales)} times")
    per = scales if len(scales) == len(loras) else (scales or (1.0,)) * len(loras)
    return tuple(zip(loras, per))


def _open_chat(
    lm: Path,
    mmprojs: tuple[Path, ...],
    loras: tuple[Path, ...],
    lora_scales: tuple[float, ...],
    detail: str | None,
    think: bool,
    system: str | None,
    temperature: float,
    top_p: float,
    top_k: int,
    repeat_penalty: float,
    seed: int | None,
    max_tokens: int,
    ctx: int,
    threads: int | None,
    max_frames: int,
):
    """(the model, a chat session on it); close the session before the model."""
    from .pipeline.folder import gguf_paths
    from .runtime import Sampling, open_model

    lm, mmprojs = gguf_paths(lm, mmprojs)  # a build folder brings its LM and every mmproj mode
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, repeat_penalty=repeat_penalty, seed=seed)
    model = open_model(lm, list(mmprojs), threads=threads, loras=_lora_pairs(loras, lora_scales))
    try:
        return model, model.chat(
            detail=detail,
            thinking=think,
            sampling=sampling,
            system=system,
            max_tokens=max_tokens,
            n_ctx=ctx,
            max_frames=max_frames,
        )
    except BaseException:
        model.close()
        raise


@cli.command()
@_chat_options
@click.option("-p", "--prompt", required=True, help="The question.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="An image (repeatable).")
@click.option("--video", type=click.Path(path_type=Path), help="A video (PyAV) or an animated GIF/WebP.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (reply and timings), no streaming.")
def run(prompt: str, images: tuple[Path, ...], video: Path | None, as_json: bool, **opts) -> None:
    """Answer one question about images (or a video), streaming the reply.

    \b
        minicpmv-gguf run lm-Q4_K_M.gguf --mmproj mmproj-16x.gguf --image cat.jpg -p "What is in the image?"
    """
    import json

    model, session = _open_chat(**opts)
    with model, session:  # the context goes before the weights
        if as_json:
            reply = session.send(prompt, list(images), video=video)
            click.echo(
                json.dumps(
                    {
                        "text": reply.text,
                        "reasoning": reply.reasoning,
                        "stop_reason": reply.stop_reason,
                        "token_ids": list(reply.token_ids),
                        "mode": session.mmproj and session.mmproj.mode,
                        "timings": reply.timings.as_dict(),
                    },
                    ensure_ascii=False,
                )
            )
            return
        from .chat_repl import echo_stream

        if echo_stream(session, session.stream(prompt, list(images), video=video)):
            sys.exit(130)
        click.echo(session.last_reply.timings.summary(), err=True)


@cli.command()
@_chat_options
@click.option("--stats", is_flag=True, help="Print token counts and timings after each reply (stderr).")
def chat(stats: bool, **opts) -> None:
    """Chat about images in the terminal (or over a pipe): /image PATH, /video PATH, /reset, /quit.

    \b
        minicpmv-gguf chat lm-Q4_K_M.gguf --mmproj mmproj-16x.gguf --mmproj mmproj-4x.gguf
    """
    from .chat_repl import Repl

    model, session = _open_chat(**opts)
    with model, session:  # the context goes before the weights
        Repl(session, stats=stats).run()


@cli.command()
@click.argument("source")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The build directory.")
@click.option(
    "--quant",
    default="Q4_K_M",
    show_default=True,
    help="The LM's llama-quantize type (Q4_K_M, Q5_K_M, Q8_0, ...); F16, BF16 or F32 skip quantization.",
)
@click.option("--modes", default=spec.DEFAULT_MODE, show_default=True, help="mmproj modes: 16x, 4x or 16x,4x.")
@click.option(
    "--lm-outtype",
    type=click.Choice(["auto", "f32", "f16", "bf16"]),
    default="auto",
    show_default=True,
    help="The unquantized LM GGUF that is quantized (auto: the checkpoint's own float type).",
)
@_mmproj_outtype_option("--mmproj-outtype", spec.BUILD_MMPROJ_TYPE)
@click.option("--keep-unquantized", is_flag=True, help="Keep the unquantized LM GGUF (for verify, imatrix, eval).")
@click.option("--name", default=spec.MODEL_ID, show_default=True, help="The Ollama model name.")
@click.option("--no-ollama", is_flag=True, help="Write no Ollama package.")
@click.option("--revision", help="A hub branch, tag or commit (for a repo id).")
@click.option("--threads", type=click.IntRange(min=1), help="Quantizer threads (default: all cores).")
@click.option("--verify", "then_verify", is_flag=True, help="Then run `verify` (needs torch and transformers).")
@click.option("--force", is_flag=True, help="Build into a directory that holds something else; redo every stage.")
@_lora_options
@click.pass_context
def build(
    ctx: click.Context,
    source: str,
    out: Path,
    quant: str,
    modes: str,
    lm_outtype: str,
    mmproj_outtype: str,
    keep_unquantized: bool,
    name: str,
    no_ollama: bool,
    revision: str | None,
    threads: int | None,
    then_verify: bool,
    force: bool,
    loras: tuple[Path, ...],
    lora_scales: tuple[float, ...],
) -> None:
    """A checkpoint directory or Hugging Face repo id -> quantized LM, mmproj, Ollama package and manifest.

    Running it again skips the stages whose outputs match the manifest.

    \b
        minicpmv-gguf build ./MiniCPM-V-4_6 -o minicpm-v4.6
        minicpmv-gguf build openbmb/MiniCPM-V-4.6 -o minicpm-v4.6 --modes 16x,4x
    """
    from . import pipeline

    result = pipeline.build(
        source,
        out,
        quant=quant,
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
        lm_outtype=lm_outtype,
        mmproj_outtype=mmproj_outtype,
        keep_unquantized=keep_unquantized,
        ollama=not no_ollama,
        ollama_name=name,
        revision=revision,
        threads=threads,
        force=force,
        progress=pipeline.StageProgress(sys.stderr),
        loras=tuple(_open_loras(loras, lora_scales)),
    )
    click.echo(result.summary())
    if then_verify:
        ctx.invoke(verify_, build_dir=out, checkpoint=str(result.source.path))


@cli.command("lora")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The base checkpoint directory.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="The adapter GGUF to write.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def lora_(adapter: Path, base: Path, out: Path, force: bool) -> None:
    """A PEFT LoRA adapter's language-model targets -> a llama.cpp adapter GGUF, for `run/chat/serve --lora`.

    Vision-tower adapters cannot run as llama.cpp adapters: merge them with `mmproj --lora` or `build --lora`.

    \b
        minicpmv-gguf lora ./my-adapter --base ./MiniCPM-V-4_6 -o my-adapter.gguf
        minicpmv-gguf run minicpmv46/ --lora my-adapter.gguf -p "..."
    """
    from .lora.gguf_adapter import write_lora_gguf

    click.echo(write_lora_gguf(adapter, base, out, overwrite=force).summary())


@cli.command("verify")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", help="The checkpoint directory (or repo id); default: the build's source.")
@click.option("--threads", type=click.IntRange(min=1), help="llama.cpp threads (default: 2).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--no-record", is_flag=True, help="Do not write the result into manifest.json.")
@click.pass_context
def verify_(
    ctx: click.Context,
    build_dir: Path,
    checkpoint: str | None,
    threads: int | None = None,
    as_json: bool = False,
    no_record: bool = False,
) -> None:
    """Parity of a build's GGUFs with the PyTorch reference: tokenizer, text logits, image embeddings.

    Exit 1 when a check is past its bound. Needs torch and transformers.
    """
    import json

    from .verify import verify

    report = verify(build_dir, checkpoint, threads=threads, record=not no_record)
    click.echo(json.dumps(report.as_dict()) if as_json else report.table())
    if not report.ok:
        ctx.exit(1)


@cli.command("inspect")
@click.argument("gguf", type=click.Path(path_type=Path))
@click.option("--tensors", is_flag=True, help="List every tensor too.")
def inspect_(gguf: Path, tensors: bool) -> None:
    """Key/values, tensor types and sizes of a GGUF file (its header only: fast on any size)."""
    from .gguf_inspect import inspect_gguf

    click.echo(inspect_gguf(gguf).text(tensors=tensors))


@cli.command()
@click.argument("lm", metavar="BUILD_DIR|LM.gguf", type=click.Path(path_type=Path))
@click.option(
    "--mmproj", "mmprojs", multiple=True, type=click.Path(path_type=Path), help="An mmproj GGUF (repeatable)."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--api-key", envvar="MINICPMV_GGUF_API_KEY", help="Require `Authorization: Bearer KEY` (env MINICPMV_GGUF_API_KEY)."
)
@click.option("--allow-insecure-bind", is_flag=True, help="Allow a non-loopback --host without --api-key.")
@click.option(
    "--ctx", type=click.IntRange(min=256), default=spec.DEFAULT_N_CTX, show_default=True, help="Context length."
)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: the physical cores).")
@click.option("--model-id", default=spec.MODEL_ID, show_default=True, help="The model id /v1/models lists.")
@click.option("--cors", "cors", multiple=True, help="Allow browser requests from this origin (repeatable).")
@click.option("--allow-remote-images", is_flag=True, help="Fetch http(s) image URLs (10 MB, 10 s caps).")
@click.option("--media-dir", type=click.Path(path_type=Path, file_okay=False), help="Serve file:// images under DIR.")
@click.option("--max-body-mb", type=click.IntRange(min=1), default=32, show_default=True, help="Request body cap.")
@click.option("--max-queued", type=click.IntRange(min=1), default=8, show_default=True, help="Requests that may wait.")
@click.option(
    "--image-cache-mb", type=click.IntRange(min=0), default=64, show_default=True, help="Image embeddings kept."
)
@click.option(
    "--state-cache-mb", type=click.IntRange(min=0), default=256, show_default=True, help="Model-state snapshots kept."
)
@click.option(
    "--lora", "loras", multiple=True, type=click.Path(path_type=Path), help="A LoRA adapter GGUF (repeatable)."
)
@click.option("--lora-scale", "lora_scales", multiple=True, type=float, help="Adapter scale: once, or once per --lora.")
def serve(
    lm: Path,
    mmprojs: tuple[Path, ...],
    host: str,
    port: int,
    api_key: str | None,
    allow_insecure_bind: bool,
    ctx: int,
    threads: int | None,
    model_id: str,
    cors: tuple[str, ...],
    allow_remote_images: bool,
    media_dir: Path | None,
    max_body_mb: int,
    max_queued: int,
    image_cache_mb: int,
    state_cache_mb: int,
    loras: tuple[Path, ...],
    lora_scales: tuple[float, ...],
) -> None:
    """An OpenAI-compatible server: POST /v1/chat/completions, GET /v1/models, GET /health.

    BUILD_DIR is a folder `build` wrote (its LM and every mmproj mode); or give the LM GGUF and --mmproj files.

    \b
        minicpmv-gguf serve minicpmv46/
        minicpmv-gguf serve lm-Q4_K_M.gguf --mmproj mmproj-16x.gguf --mmproj mmproj-4x.gguf
        curl http://127.0.0.1:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'
    """
    from .pipeline.folder import gguf_paths
    from .serve import Settings, run_server
    from .serve.images import ImagePolicy

    lm, mmprojs = gguf_paths(lm, mmprojs)

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        if not allow_insecure_bind:
            raise click.UsageError(
                f"--host {host} exposes the server to the network: set --api-key, or pass --allow-insecure-bind"
            )
        click.echo(f"warning: listening on {host} without an API key: anyone who can reach it can use it", err=True)
    settings = Settings(
        lm=lm,
        mmprojs=mmprojs,
        model_id=model_id,
        n_ctx=ctx,
        threads=threads,
        api_key=api_key,
        cors_origins=cors,
        max_body_bytes=max_body_mb << 20,
        max_queued=max_queued,
        image_cache_bytes=image_cache_mb << 20,
        state_cache_bytes=state_cache_mb << 20,
        images=ImagePolicy(allow_remote=allow_remote_images, media_dir=media_dir),
        loras=_lora_pairs(loras, lora_scales),
    )
    run_server(settings, host=host, port=port)


def main() -> None:
    cli(prog_name="minicpmv-gguf")


if __name__ == "__main__":
    main()

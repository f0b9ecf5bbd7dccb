"""The interactive loop of `minicpmv-gguf chat`: lines from stdin (a terminal or a pipe), replies to stdout.

Commands: /image PATH and /video PATH attach to the next message, /reset forgets the conversation,
/quit (or end of input) leaves. Ctrl-C stops the reply being written, not the program.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import ToolkitError
from .runtime import ChatSession, Picture, load_image

HELP = "/image PATH, /video PATH: attach to the next message; /reset: new conversation; /quit: leave"


class Repl:
    """Reads commands and questions, prints replies; keeps the attachments for the next question."""

    def __init__(self, session: ChatSession, *, stats: bool) -> None:
        self.session, self.stats = session, stats
        self.images: list[Picture] = []
        self.video: Path | None = None
        self.interactive = sys.stdin.isatty()

    def run(self) -> None:
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and up-arrow history for input())
            except ImportError:
                pass
            click.echo(f"chat ({self.session.mmproj.mode if self.session.mmproj else 'text only'}); {HELP}", err=True)
        while (line := self._read()) is not None:
            if not line.strip():
                continue
            try:
                if line.startswith("/"):
                    if not self._command(line.strip()):
                        return
                else:
                    self._ask(line)
            except ToolkitError as err:
                click.echo(f"error: {err}", err=True)

    def _read(self) -> str | None:
        """The next line, or None at the end of input; Ctrl-C at the prompt just clears the line."""
        while True:
            try:
                if self.interactive:
                    return input("> ")
                line = sys.stdin.readline()
                return line.rstrip("\n") if line else None
            except EOFError:
                return None
            except KeyboardInterrupt:
                click.echo("\n(/quit or Ctrl-D to leave)", err=True)

    def _command(self, line: str) -> bool:
        """Run one /command; False means leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.session.reset()
            self.images, self.video = [], None
            click.echo("(new conversation)", err=True)
        elif name == "/image" and arg:
            self.images.append(load_image(Path(arg).expanduser()))
            click.echo(f"(image {arg} attached to the next message)", err=True)
        elif name == "/video" and arg:
            self.video = Path(arg).expanduser()
            click.echo(f"(video {arg} attached to the next message)", err=True)
        else:
            click.echo(HELP, err=True)
        return True

    def _ask(self, text: str) -> None:
        images, video = self.images, self.video
        self.images, self.video = [], None  # an attachment goes with one question, even a failed one
        echo_stream(self.session, self.session.stream(text, images, video=video))
        reply = self.session.last_reply
        if self.stats and reply is not None:
            click.echo(f"[{reply.stop_reason}] {reply.timings.summary()}", err=True)


def echo_stream(session, stream) -> bool:
    """Print a streamed reply as it comes; Ctrl-C stops the reply only. True if it was interrupted."""
    try:
        if session.thinking:
            click.echo("<think>")  # the prompt ends with it; the reply continues from there
        for piece in stream:
            click.echo(piece, nl=False)
    except KeyboardInterrupt:
        stream.close()
        click.echo("\n(stopped)", err=True)
        click.echo()
        return True
    click.echo()
    return False

"""The `linearsr` command. Each subcommand lives in its own module and imports torch and friends only
when it runs, so `linearsr --help` is instant and optional extras are needed only by their commands.

User errors (bad files, bad settings, missing models) print one line and exit with status 2; set
LINEARSR_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

import click

from .. import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for people ("linearsr: warning: ..."), not Python's file:line: UserWarning form."""
    click.echo(f"linearsr: warning: {' '.join(str(message).split())}", err=True)


class _Interrupts:
    """Ctrl-C: the first press unwinds the command (temp files removed, the server stopped); presses during
    that clean-up and the interpreter's exit handlers are not turned into tracebacks ("Exception ignored in
    atexit callback"): the second says clean-up is under way, the third quits at once."""

    def __init__(self) -> None:
        self.presses, self.previous = 0, None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False  # someone chose their own handling: leave it
        self.previous = signal.signal(signal.SIGINT, self._press)
        return True

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _press(self, signum, frame) -> None:
        self.presses += 1
        if self.presses == 1:
            raise KeyboardInterrupt
        if self.presses == 2:
            os.write(2, b"linearsr: cleaning up; press Ctrl-C again to quit at once\n")
            return
        os.write(2, b"interrupted\n")
        os._exit(130)


class FriendlyGroup(click.Group):
    def invoke(self, ctx: click.Context):
        if not os.environ.get("LINEARSR_DEBUG"):
            warnings.showwarning = _show_warning
        interrupts = _Interrupts()
        installed = interrupts.install()
        try:
            result = super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:  # the handler stays: more presses while exiting are no tracebacks
            installed = False
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (ValueError, OSError, RuntimeError) as e:
            if os.environ.get("LINEARSR_DEBUG"):
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"linearsr: error: {message}", err=True)
            sys.exit(2)
        finally:
            if installed:
                interrupts.restore()
        return result


@click.group(cls=FriendlyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="linearsr")
def main() -> None:
    """LinearSR: generative image super-resolution with a linear-attention diffusion transformer."""
    from ..runtime import tune_process

    tune_process()  # allocator reuse and thread counts, before any command loads torch (runtime.py)


def _register() -> None:
    import importlib

    for name in ("upscale", "train", "data", "info", "knee", "export", "eval", "bench", "ablate", "serve", "sana", "span", "estimator"):
        module = importlib.import_module(f".{name}", __name__)
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)


_register()

"""The command line: the parser, the commands, what they print, shell completion, the demo."""

from .commands import main, run

__all__ = ["main", "run"]

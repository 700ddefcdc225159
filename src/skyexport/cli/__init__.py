"""The command line: `main()` and `run()` (commands.py), the parser (parser.py), what the
commands share (render.py) and one module per command (export.py, import_car.py, info.py,
verify.py, synth.py, demo.py, fetch.py, completion.py), each loaded only when run."""

from .commands import main, run

__all__ = ["main", "run"]

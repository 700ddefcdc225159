"""Coverage-guided fuzz target for the stored-JSON re-indenter of the compiled core
(fuzz/targets.py: json), run by fuzz/run.sh over the sanitizer build."""

import sys

import atheris

with atheris.instrument_imports(include=["skyexport", "targets"]):
    import targets

if __name__ == "__main__":
    atheris.Setup(sys.argv, targets.json)
    atheris.Fuzz()

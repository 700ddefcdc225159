"""Coverage-guided fuzz target for the CAR reader of the compiled core: framing, CIDs,
DAG-CBOR, the MST walk, the batch insert (fuzz/targets.py: car).  Run by fuzz/run.sh over
a build with AddressSanitizer and UBSan; a sanitizer report, a crash, an exception other
than the reader's own errors or a timeout is a finding."""

import sys

import atheris

with atheris.instrument_imports(include=["skyexport", "targets"]):
    import targets

if __name__ == "__main__":
    atheris.Setup(sys.argv, targets.car)
    atheris.Fuzz()

# Developer commands.  `make dev` once, then `make test`.
PY ?= python

dev:            ## editable install that rebuilds the core on import
	$(PY) -m pip install scikit-build-core cython cython-cmake ninja
	$(PY) -m pip install --no-build-isolation -Ceditable.rebuild=true -e '.[test,dev]'

test:           ## the whole suite, memory limits included, on two workers
	$(PY) -m pytest --memray -q -n 2 --dist loadfile

memtest:        ## only the memory contracts
	$(PY) -m pytest --memray -q tests/test_memory.py

annotate:       ## cython -a: HTML of the core with Python interaction highlighted
	SKYEXPORT_ANNOTATE=ON $(PY) -m pip install --no-build-isolation -e . -q
	@echo "see build/*/ext/skyexport/_core.html"

stubtest:       ## the hand-written _core.pyi against the compiled module
	$(PY) -m mypy.stubtest skyexport._core

lint:           ## ruff, mypy --strict, stubtest of _core.pyi, cython-lint: all clean
	$(PY) -m ruff check src tests perf fuzz
	$(PY) -m mypy --strict src
	$(PY) -m mypy.stubtest skyexport._core
	cython-lint --max-line-length 100 ext/skyexport

perf:           ## the benchmark table (perf/README.md); slow: builds archives up to 1M posts
	$(PY) perf/bench.py

gate:           ## the CI performance gate
	$(PY) perf/gate.py

fuzz:           ## fuzz the CAR reader and the JSON re-indenter, ASan+UBSan build, FUZZ_SECONDS each
	fuzz/run.sh fuzz

asan-test:      ## the CAR and golden test modules once, on the ASan+UBSan build
	fuzz/run.sh asan-test

.PHONY: dev test memtest annotate stubtest lint perf gate fuzz asan-test

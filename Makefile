# Developer commands.  `make dev` once, then `make test`.
PY ?= python
# The oldest manylinux the core allows: it needs nothing newer than glibc 2.17 (the
# no-replace rename goes through syscall(2), ext/skyexport/platform.h).
WHEEL_PLAT ?= manylinux_2_17_$(shell uname -m)

dev:            ## editable install that rebuilds the core on import
	$(PY) -m pip install scikit-build-core cython cython-cmake ninja
	$(PY) -m pip install --no-build-isolation -Ceditable.rebuild=true -e '.[test,dev]'

test:           ## the whole suite, memory limits included, on two workers
	$(PY) -m pytest --memray -q -n 2 --dist loadfile

memtest:        ## only the memory contracts
	$(PY) -m pytest --memray -q tests/system/test_memory_limits.py

annotate:       ## cython -a: HTML of the core with Python interaction highlighted
	SKYEXPORT_ANNOTATE=ON $(PY) -m pip install --no-build-isolation -e . -q
	@echo "see build/*/ext/skyexport/_core.html"

stubtest:       ## the hand-written _core.pyi against the compiled module
	$(PY) -m mypy.stubtest skyexport._core

lint:           ## ruff, mypy --strict, stubtest of _core.pyi, cython-lint: all clean
	$(PY) -m ruff check src tests perf fuzz
	$(PY) -m mypy --strict src tests/typed/api_usage.py
	$(PY) -m mypy.stubtest skyexport._core
	@# cython-lint runs pycodestyle by name: both from $(PY)'s own bin/, venv on PATH or not
	PATH="$$($(PY) -c 'import os, sys; print(os.path.dirname(sys.executable))'):$$PATH" \
		cython-lint --max-line-length 100 ext/skyexport

perf:           ## the benchmark table (perf/README.md); slow: builds archives up to 1M posts
	$(PY) perf/bench.py

gate:           ## the CI performance gate
	$(PY) perf/gate.py

fuzz:           ## fuzz the CAR reader and the JSON re-indenter, ASan+UBSan build, FUZZ_SECONDS each
	fuzz/run.sh fuzz

asan-test:      ## the CAR and golden test modules once, on the ASan+UBSan build
	fuzz/run.sh asan-test

wheel:          ## dist/skyexport-*-manylinux*.whl: built, then repaired by auditwheel
	rm -rf dist/raw dist/skyexport-*.whl && $(PY) -m pip wheel --no-deps -w dist/raw . -q
	$(PY) -m auditwheel repair --only-plat --plat $(WHEEL_PLAT) -w dist dist/raw/skyexport-*.whl
	rm -rf dist/raw

wheel-check:    ## install dist's wheel in a fresh venv with no compiler; demo + golden export
	bash .ci/wheel-check

cross:          ## compile the core for macOS, Windows, FreeBSD with zig cc (compile only)
	PY=$(PY) bash .ci/cross-compile

fresh-install-check:  ## the README's prerequisites on a fresh Debian (root, slow; not in CI)
	bash tools/fresh-install-check

.PHONY: dev test memtest annotate stubtest lint perf gate wheel wheel-check cross fresh-install-check fuzz asan-test

# ArtSeg developer and user entry points.
#   make demo   - create .venv if needed, then run the end-to-end demo on a generated phantom plate
#   make test   - create .venv if needed (with CellProfiler and ImageJ), then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -q
CONS   := -c requirements/constraints-cellprofiler.txt
SRC    := pyproject.toml requirements/constraints.txt requirements/constraints-cellprofiler.txt

.PHONY: all venv lint test test-numpy2 demo cellprofiler imagej chromium qt bench clean

all: test

# Base environment: the engine, the CLI and the test tools (idempotent: re-runs only when the inputs change).
$(VENV)/.stamp-base: $(SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade "pip<25" wheel "setuptools<81"
	$(PIP) $(CONS) -e ".[test,bench,fiji,dask,napari,export]"
	$(BIN)/python -c "import torch, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, 'numpy', numpy.__version__)"
	touch $@

venv: $(VENV)/.stamp-base

# CellProfiler 4.2.8.1 headless, following requirements/cellprofiler.txt (see README "CellProfiler").
# Idempotent: re-runs only when the base environment or requirements/cellprofiler.txt change, and then pip
# skips what is already installed. python-javabridge is compiled against the venv's numpy<2 (hence
# --no-build-isolation) and needs a Java JDK; CellProfiler itself is installed without its stale pins.
$(VENV)/.stamp-cellprofiler: $(VENV)/.stamp-base requirements/cellprofiler.txt
	@command -v javac >/dev/null || test -n "$$JAVA_HOME" || \
	  { echo "CellProfiler needs a Java JDK (javac on PATH or JAVA_HOME set), e.g. apt-get install openjdk-17-jdk-headless" >&2; exit 1; }
	$(PIP) $(CONS) "numpy<2" "cython<3.2"
	$(PIP) $(CONS) --no-build-isolation python-javabridge==4.0.5
	$(PIP) $(CONS) --no-deps cellprofiler==4.2.8.1 cellprofiler-core==4.2.8.1
	$(PIP) $(CONS) -r requirements/cellprofiler.txt
	$(BIN)/python -c "import numpy, javabridge, bioformats, cellprofiler_core.pipeline, cellprofiler.modules; assert numpy.__version__ < '2', numpy.__version__"
	$(BIN)/cellprofiler --version
	touch $@

cellprofiler: $(VENV)/.stamp-cellprofiler

# ImageJ 1.x from Debian plus a virtual display (and javac for the tests' MacroRunner), for the Fiji/ImageJ tests.
imagej:
	@if [ -f /usr/share/java/ij.jar ] && command -v xvfb-run >/dev/null && command -v javac >/dev/null; then \
	  echo "ImageJ present"; else \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagej libij-java xvfb xauth \
	   $$(command -v javac >/dev/null || echo default-jdk-headless) >/dev/null) \
	  || echo "WARNING: could not install ImageJ; ImageJ tests will be skipped"; fi

# Qt's X11 platform libraries and Xvfb for the napari tests (pytest-xvfb starts the virtual display).
qt:
	@if [ -f /usr/lib/x86_64-linux-gnu/libxcb-icccm.so.4 ] && command -v Xvfb >/dev/null; then echo "Qt libraries present"; else \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 \
	   libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 >/dev/null) \
	  || echo "WARNING: could not install the Qt/X11 libraries; the napari tests will be skipped"; fi

# Headless Chromium for the browser tests (plate report, labelling app); they skip without it.
chromium:
	@if command -v chromium >/dev/null; then echo "Chromium present"; else \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install Chromium; the report browser test will be skipped"; fi

lint: $(VENV)/.stamp-base
	$(BIN)/ruff check artseg_core tests bench plugins fiji_scripts

test: $(VENV)/.stamp-base $(VENV)/.stamp-cellprofiler imagej chromium qt lint
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-numpy2

# The engine must also work with numpy 2 (the main .venv has numpy<2 because of CellProfiler): a second,
# engine-only environment runs the engine's unit tests with numpy>=2.
NP2 := .venv-np2
$(NP2)/.stamp: $(SRC)
	test -x $(NP2)/bin/python || $(PYTHON) -m venv $(NP2)
	$(NP2)/bin/pip install --disable-pip-version-check -q -c requirements/constraints.txt "numpy>=2" pytest pytest-timeout -e .
	$(NP2)/bin/python -c "import numpy; assert numpy.__version__ >= '2', numpy.__version__; print('numpy', numpy.__version__)"
	touch $@

test-numpy2: $(NP2)/.stamp
	$(NP2)/bin/python -m pytest -q -ra -p no:cacheprovider -p no:xvfb -m engine tests

demo: $(VENV)/.stamp-base
	$(BIN)/artseg demo --out demo_out

bench: $(VENV)/.stamp-base
	$(BIN)/python bench/scorecam.py --quick
	$(BIN)/python bench/unet.py --quick

clean:
	rm -rf $(VENV) $(NP2) demo_out .pytest_cache

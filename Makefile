# pg_llm: PGXS build of pg_llm.so = C shims (pyx/shim) + the Cython kernels
# (pyx/_kernels.pyx cythonized to C and linked in, with no libpython).
#
#   make [PG_CONFIG=/path/to/pg_config] [PG_LLM_PYTHON=python3] [PG_LLM_MARCH=native]
#   make install
#   psql -c 'CREATE EXTENSION pg_llm'
#
# The build fails if pg_llm.so references any Python symbol (check-nopython).

EXTENSION   = pg_llm
MODULE_big  = pg_llm
EXT_VERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" pg_llm.control)
DATA        = $(wildcard sql/pg_llm--*.sql)
PGFILEDESC  = "pg_llm - GPT-2 in PostgreSQL"

# PGXS defines PYTHON (the one PostgreSQL was configured with): use our own name
PG_LLM_PYTHON ?= python3
SHIM_SRCS   = $(sort $(wildcard pyx/shim/*.c))
SHIM_OBJS   = $(patsubst %.c,%.o,$(filter-out pyx/shim/nopython_stubs.c,$(SHIM_SRCS)))
KERNEL_C    = build/pg/_kernels.c
KERNEL_OBJ  = build/pg/_kernels.o
OBJS        = $(SHIM_OBJS) $(KERNEL_OBJ) pyx/shim/nopython_stubs.o

PG_CPPFLAGS = -I$(srcdir)/pyx -DPG_LLM_VERSION='"$(EXT_VERSION)"'
PG_CFLAGS   = -fopenmp
# --gc-sections drops the Python-facing wrappers (unreachable from the
# exported symbols); the version script keeps every other symbol local.
SHLIB_LINK  = -fopenmp -lz -Wl,--gc-sections -Wl,--version-script=$(srcdir)/pyx/shim/exports.map

# PG_LLM_SANITIZE=address: an AddressSanitizer build (scripts/fuzz_parsers.py
# --asan-server runs the server with the ASan runtime preloaded)
ifdef PG_LLM_SANITIZE
PG_CFLAGS  += -fsanitize=$(PG_LLM_SANITIZE) -fno-omit-frame-pointer
SHLIB_LINK += -fsanitize=$(PG_LLM_SANITIZE)
endif

EXTRA_CLEAN = build/pg

# The generated C includes Python.h, which clang's bitcode rule can't find:
# no JIT bitcode (the kernels are opaque to the JIT anyway).
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Python headers are needed to compile the generated C only; nothing from
# libpython is linked (pyx/shim/nopython_stubs.c answers Cython's GIL checks).
PY_INC          := $(shell $(PG_LLM_PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
CYTHON_FLAGS    := $(shell $(PG_LLM_PYTHON) pyx/build_config.py directives)
KERNEL_CFLAGS   := $(shell $(PG_LLM_PYTHON) pyx/build_config.py cflags)
KERNEL_DEPS     := $(wildcard pyx/*.pyx pyx/*.pxi pyx/*.pxd pyx/*.h pyx/build_config.py)

KERNEL_CYTHONIZE = $(PG_LLM_PYTHON) -m cython $(CYTHON_FLAGS) -I pyx -o $(KERNEL_C) pyx/_kernels.pyx

$(KERNEL_C): $(KERNEL_DEPS)
	@mkdir -p $(dir $@)
	$(KERNEL_CYTHONIZE)

# PG_LLM_KERNEL_CACHE=DIR keeps the compiled kernels in DIR under a key of
# everything they are made from (their sources, Cython's version and
# directives, the compiler, its version and the flags that change code: not
# warnings), so that builds for several PostgreSQL versions compile them
# once: they include no PostgreSQL header.  tox sets it; without it, every
# build compiles them.
ifdef PG_LLM_KERNEL_CACHE
KERNEL_KEY    := $(shell { echo '$(CC) | $(filter-out -W%,$(CFLAGS)) | $(KERNEL_CFLAGS) | $(CYTHON_FLAGS) | $(PY_INC) | $(PG_LLM_SANITIZE)'; \
                   $(CC) --version | head -n 1; $(PG_LLM_PYTHON) -m cython --version 2>&1; cat $(KERNEL_DEPS); } \
                   | sha256sum | cut -c1-24)
KERNEL_CACHED := $(PG_LLM_KERNEL_CACHE)/_kernels-$(KERNEL_KEY).o

$(KERNEL_OBJ): $(KERNEL_CACHED)
	@mkdir -p $(dir $@)
	cp $< $@

# written under a temporary name and renamed: a build that stops halfway
# leaves no object under the key
$(KERNEL_CACHED):
	@mkdir -p $(dir $@) $(dir $(KERNEL_C))
	$(KERNEL_CYTHONIZE)
	$(CC) $(CFLAGS) $(CPPFLAGS) -c -o $@.tmp$$$$ $(KERNEL_C) && mv -f $@.tmp$$$$ $@
endif

$(KERNEL_OBJ): override CPPFLAGS += -I$(PY_INC)
# (globals not instrumented there: their ASan metadata would keep the unused
# Python wrappers, and with them libpython, in the link)
$(KERNEL_OBJ): override CFLAGS += $(KERNEL_CFLAGS) $(if $(PG_LLM_SANITIZE),-fsanitize=$(PG_LLM_SANITIZE) --param asan-globals=0) -Wno-unused-function -Wno-missing-prototypes \
	-Wno-declaration-after-statement -Wno-shadow=compatible-local -Wno-cast-function-type \
	-Wno-unused-but-set-variable -Wno-maybe-uninitialized -Wno-uninitialized -Wno-missing-format-attribute

$(SHIM_OBJS): pyx/shim/pg_llm.h pyx/pg_llm_kernels.h
# PG_LLM_VERSION comes from the control file
pyx/shim/pg_llm.o: pg_llm.control

all: check-nopython
check-nopython: $(shlib)
	@if nm -D --undefined-only $(shlib) | grep -E ' _?_?Py'; then \
	  echo "ERROR: $(shlib) references the Python C-API (see pyx/shim/nopython_stubs.c)"; exit 1; fi
	@echo "check-nopython: $(shlib) has no Python symbols"

# Assembly of the kernels, to check what gcc made of the micro-kernels.
asm: $(KERNEL_C)
	$(CC) $(CFLAGS) $(KERNEL_CFLAGS) $(CPPFLAGS) -I$(PY_INC) -S $(KERNEL_C) -o build/pg/_kernels.s
	@echo "build/pg/_kernels.s: look at pgllm_micro_avx512 / pgllm_micro_avx2"

.PHONY: check-nopython asm

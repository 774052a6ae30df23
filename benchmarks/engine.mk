# Included by the benchmarks' Makefiles: ENGINE_CFLAGS / ENGINE_LIBS link this tree's release build
# (`make build` at the repository root) as a user's program does, or, without one, the ProgressEngine that
# pkg-config finds. Paths are relative to the including Makefile's folder (benchmarks/<name>/).
TREE_LIB := $(abspath ../../.build/release)

ifneq ($(wildcard $(TREE_LIB)/libProgressEngine.so),)
ENGINE_CFLAGS := -I$(abspath ../../include)
ENGINE_LIBS := -L$(TREE_LIB) -Wl,-rpath,$(TREE_LIB) -lProgressEngine
else
ENGINE_CFLAGS := $(shell pkg-config --cflags progress-engine)
ENGINE_LIBS := $(shell pkg-config --libs progress-engine)
endif

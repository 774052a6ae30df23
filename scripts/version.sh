#!/usr/bin/env bash
# Prints the version of include/progress.h as MAJOR.MINOR.PATCH.
cd "$(dirname "$0")/.."
v() { sed -n "s/^#define PROGRESS_VERSION_$1 \([0-9]*\)$/\1/p" include/progress.h; }
echo "$(v MAJOR).$(v MINOR).$(v PATCH)"

"""What the Python benchmarks share: the checkout's binding on sys.path (they run from a checkout without
installing the package) and tqdm, the baseline each one compares with (exit status 2 without it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))

try:
    from tqdm import tqdm  # noqa: F401  (re-exported)
except ImportError:
    print("tqdm is not installed (pip install tqdm); it is the baseline of this benchmark")
    sys.exit(2)

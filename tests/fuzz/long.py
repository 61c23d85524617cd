"""``python tests/fuzz/long.py [--minutes N] [--seed S]``: the long fuzz campaign.

Runs the core, live and frame campaigns in rounds with fresh seeds until the time is up,
printing each round's rate; stops at the first property violation and prints its seed, so
``UNISOCK_FUZZ_SEED=<seed> pytest tests/test_fuzz.py`` reproduces the CI-sized version.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.campaigns import core_campaign, frame_campaign, live_campaign


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    totals = {"core": 0, "live": 0, "frames": 0}
    while time.monotonic() < deadline:
        seed = rng.randrange(2**32)
        for run, size in ((core_campaign, 2000), (live_campaign, 500), (frame_campaign, 500)):
            try:
                stats = run(size, seed)
            except AssertionError as error:
                print(f"FOUND (seed {seed}): {error}", flush=True)
                return 1
            totals[stats.name] += stats.cases
            print(f"{stats.line()} (seed {seed})", flush=True)
            if time.monotonic() >= deadline:
                break
    print(f"no property violated; cases: {totals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up time of the ``lit-fed`` command: ``lit-fed --help`` and ``lit-fed fit --help``.

Each command runs in a fresh process with an empty help cache: the first call renders the page (importing
Lightning, torch and torchmetrics to build the parser), the second prints the cached page
(:mod:`lit_fed.cli_help`). Also times ``import lit_fed`` and ``import lit_fed.cli`` (lazy exports: neither
imports torch). Prints the best of ``--repeats`` per command, in seconds.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def entry_point() -> list[str]:
    """The ``lit-fed`` console script where it runs from this checkout, else ``python -m lit_fed.cli``."""
    script = shutil.which("lit-fed")
    return [script] if script else [sys.executable, "-m", "lit_fed.cli"]


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per measurement")
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.pop("LIT_FED_HELP_CACHE", None)
    lit_fed = entry_point()
    rows: list[tuple[str, float]] = []
    for name, code in (("import lit_fed", "import lit_fed"), ("import lit_fed.cli", "import lit_fed.cli")):
        rows.append((name, min(timed([sys.executable, "-c", code], env) for _ in range(args.repeats))))
    for request in (["--help"], ["fit", "--help"]):
        label = "lit-fed " + " ".join(request)
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                env["LIT_FED_CACHE_DIR"] = cache
                cold.append(timed([*lit_fed, *request], env))
                warm.append(timed([*lit_fed, *request], env))
        rows += [(f"{label} (first call, renders)", min(cold)), (f"{label} (cached page)", min(warm))]
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.2f}")


if __name__ == "__main__":
    main()

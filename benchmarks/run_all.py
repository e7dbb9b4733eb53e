"""Run every benchmark script in this folder (`*_bench.py`, in name order), one after the other.

Each script runs in its own process with this interpreter and prints its own figures; this runner
adds a header per script, the wall time it took, and a closing summary of each script's verdict
lines (lines that start with PASS or FAIL). `make bench` calls it.

Benchmarks are not tests: a FAIL verdict is reported, and only turns into a non-zero exit status
with --strict. A script that crashes (non-zero exit) always does.

    .venv/bin/python benchmarks/run_all.py [-k SUBSTRING] [--list] [--strict]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(pattern: str | None) -> list[Path]:
    found = sorted(HERE.glob("*_bench.py"))
    return [path for path in found if pattern is None or pattern in path.name]


def run(path: Path) -> tuple[int, list[str], float]:
    """Run one script, echoing its output as it comes; (exit status, verdict lines, seconds)."""
    verdicts: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith(("PASS", "FAIL")):
                verdicts.append(line.strip())
        status = proc.wait()
    return status, verdicts, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-k", dest="pattern", help="run only scripts whose file name contains this")
    parser.add_argument("--list", action="store_true", help="list the scripts and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a script prints a FAIL verdict")
    args = parser.parse_args()

    selected = scripts(args.pattern)
    if not selected:
        print(f"no benchmark script matches {args.pattern!r} in {HERE}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(path.name for path in selected))
        return 0

    results: list[tuple[str, int, list[str], float]] = []
    for path in selected:
        print(f"\n=== {path.name} ===", flush=True)
        status, verdicts, seconds = run(path)
        results.append((path.name, status, verdicts, seconds))

    print("\n=== summary ===")
    crashed = failed = False
    for name, status, verdicts, seconds in results:
        if status != 0:
            crashed = True
            outcome = f"exited with status {status}"
        elif verdicts:
            failed = failed or any(v.startswith("FAIL") for v in verdicts)
            outcome = "; ".join(verdicts)
        else:
            outcome = "figures printed above (no PASS/FAIL verdict)"
        print(f"{name} ({seconds:.0f} s): {outcome}")
    return 1 if crashed or (args.strict and failed) else 0


if __name__ == "__main__":
    sys.exit(main())

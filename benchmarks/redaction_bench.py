"""What scrubbing secrets out of log records costs (`controller/redaction.py`), on the event loop.

Registers 1,024 secrets (as 1,024 pools' SecretKeys would be; `--secrets 10000` for 10,000), then
more at capacity (each one
evicts the oldest, as a tenant re-applying Secrets in a loop would cause), re-registers known ones
(every pass does), and scrubs log lines with and without a secret. Prints the figures and a verdict
per target.

    .venv/bin/python benchmarks/redaction_bench.py [--secrets 1024] [--against REV]

`--against REV` measures the redactor of that git revision too (read with `git show`, loaded from
a temporary folder), for a before/after table: `--against HEAD` before a change is committed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODULE = "operator/spotpool/controller/redaction.py"
LINE = ("Handler 'keep_pool' team-a/gpu-pool: bought 3 instances (ins-0a1b2c3d, ins-4e5f6a7b, ins-8c9d0e1f) in "
        "ap-guangzhou-3 at 0.0923 USD/h; 17 of 20 running, next observation in 2.0 s")
TARGETS = {"register_all": 1.0, "per_new_ms": 1.0, "per_line_us": 50.0}
"""Registering all secrets (s), one new secret at capacity (ms, mean), one log line (µs)."""


def key(n: int) -> str:
    """A SecretKey-like value: 32 characters that look random (and share no long prefix, which a
    regular expression engine would exploit)."""
    return base64.b64encode(hashlib.sha256(n.to_bytes(8, "big")).digest()).decode()[:32]


def load(rev: str | None) -> ModuleType:
    if rev is None:
        sys.path.insert(0, str(REPO / "operator"))
        from spotpool.controller import redaction

        return redaction
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{MODULE}"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="redaction-")) / f"redaction_{len(rev)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def measure(module: ModuleType, count: int) -> dict[str, float]:
    redactor: Any = module.Redactor(max_secrets=count)
    started = time.perf_counter()
    for n in range(count):
        redactor.add(key(n))
    register_all = time.perf_counter() - started
    new = []
    for n in range(count, count + 64):  # at capacity: each new one evicts the oldest
        started = time.perf_counter()
        redactor.add(key(n))
        new.append(time.perf_counter() - started)
    started = time.perf_counter()
    for n in range(count, count + 64):
        redactor.add(key(n))  # known already: a pass re-registering its pool's key
    again = (time.perf_counter() - started) / 64
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        redactor.scrub(LINE)
    per_line = (time.perf_counter() - started) / rounds
    with_secret = f"{LINE} signed with {key(count + 10)}"
    assert redactor.scrub(with_secret).endswith(" signed with ***")
    started = time.perf_counter()
    for _ in range(rounds):
        redactor.scrub(with_secret)
    per_line_secret = (time.perf_counter() - started) / rounds
    return {
        "register_all": register_all,
        "per_new_ms": statistics.mean(new) * 1e3,
        "per_new_max_ms": max(new) * 1e3,
        "again_us": again * 1e6,
        "per_line_us": per_line * 1e6,
        "per_line_secret_us": per_line_secret * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=int, default=1024, help="secrets registered (and kept) (default 1024)")
    parser.add_argument("--against", metavar="REV", help="also measure the redactor of this git revision")
    args = parser.parse_args()
    runs = [("this tree", measure(load(None), args.secrets))]
    if args.against:
        runs.insert(0, (args.against, measure(load(args.against), args.secrets)))
    rows = [
        (f"register {args.secrets} secrets (s)", "register_all", "{:.3f}"),
        ("one new secret at capacity, mean (ms)", "per_new_ms", "{:.3f}"),
        ("one new secret at capacity, max (ms)", "per_new_max_ms", "{:.3f}"),
        ("a known secret again (µs)", "again_us", "{:.1f}"),
        (f"a log line of {len(LINE)} chars, no secret (µs)", "per_line_us", "{:.1f}"),
        ("the same line with a secret (µs)", "per_line_secret_us", "{:.1f}"),
    ]
    width = max(len(label) for label, _, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{name:>12}" for name, _ in runs))
    for label, field, fmt in rows:
        print(f"{label:{width}}  " + "  ".join(f"{fmt.format(figures[field]):>12}" for _, figures in runs))
    figures = runs[-1][1]
    for field, target in TARGETS.items():
        verdict = "PASS" if figures[field] <= target else "FAIL"
        print(f"{verdict} redaction {field} = {figures[field]:.3f} (target <= {target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

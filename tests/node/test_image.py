"""The image tools/build-image.sh builds from deploy/Dockerfile: what is in it and what is not, run
the way the chart runs it (read-only root, UID 65532, no capabilities)."""

from __future__ import annotations

import json
import subprocess

from tests.node.conftest import OperatorImage

PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
# The machines this runs on refuse rlimits above their hard limits, which podman's defaults exceed.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
MAX_SIZE_MB = 400  # Debian or python:3.11-slim base (~130-150 MB) plus the virtualenv (~200 MB)


def run_in_image(image: OperatorImage, script: str) -> dict[str, object]:
    proc = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--read-only", "--cap-drop=ALL", "--network=none",
                           "--entrypoint", "python", image.tag, "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_image_holds_the_operator_and_nothing_to_build_or_install_with(operator_image: OperatorImage) -> None:
    facts = run_in_image(operator_image, (
        "import json, os, shutil, importlib.util\n"
        "print(json.dumps({\n"
        "  'uid': os.getuid(),\n"
        "  'spotpool': shutil.which('spotpool'),\n"
        "  'venv_pip': os.path.exists('/opt/venv/bin/pip'),\n"
        "  'venv_pip_module': importlib.util.find_spec('pip') is not None and\n"
        "     importlib.util.find_spec('pip').origin.startswith('/opt/venv'),\n"
        "  'compilers': [c for c in ('gcc', 'cc', 'g++', 'clang', 'make') if shutil.which(c)],\n"
        "  'source_tree': [p for p in ('/src', '/wheels', '/opt/venv/src') if os.path.exists(p)],\n"
        "  'pyc_writable': os.access('/opt/venv', os.W_OK),\n"
        "}))\n"))
    assert facts["uid"] == 65532
    assert facts["spotpool"] == "/opt/venv/bin/spotpool"
    assert facts["venv_pip"] is False and facts["venv_pip_module"] is False, facts
    assert facts["compilers"] == [] and facts["source_tree"] == [], facts
    assert facts["pyc_writable"] is False
    assert operator_image.size_bytes < MAX_SIZE_MB * 1_000_000, f"{operator_image.size_bytes / 1e6:.0f} MB"


def test_operator_entrypoint_starts_as_the_image_user(operator_image: OperatorImage) -> None:
    """`spotpool operator --help` through the image's own ENTRYPOINT, as UID 65532 with no
    /etc/passwd entry: the whole package imports from the read-only virtualenv."""
    proc = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--read-only", "--cap-drop=ALL", "--network=none",
                           operator_image.tag, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--metrics-port" in proc.stdout

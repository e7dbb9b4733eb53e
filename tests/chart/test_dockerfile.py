"""deploy/Dockerfile, read statically: the final stage is python:3.11-slim with the builder's
virtualenv only, runs as the chart's non-root user, and starts the operator; what the builder copies
is in the build context. tests/node builds the image for real (tools/build-image.sh, podman) and
runs it on a real kubelet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chart.helm import CHART
from tests.conftest import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            result.append([])
        if result:
            result[-1].append((instruction.upper(), args.strip()))
    return result


def test_final_stage_is_slim_python_with_the_venv_only() -> None:
    builder, final = stages()
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not [args for instruction, args in final if instruction == "RUN"]


def test_runs_as_the_charts_non_root_user_and_starts_the_operator() -> None:
    final = dict(stages()[1])
    assert final["USER"] == "65532:65532"
    assert "runAsUser: 65532" in (CHART / "templates" / "_helpers.tpl").read_text()
    assert final["ENTRYPOINT"] == '["spotpool", "operator"]'
    assert "PATH=/opt/venv/bin:$PATH" in final["ENV"]


def test_builder_copies_only_what_the_build_context_keeps() -> None:
    builder = stages()[0]
    sources = [args.split()[0] for instruction, args in builder if instruction == "COPY"]
    assert sources == ["pyproject.toml", "operator/"]
    for source in sources:
        assert (REPO / source).exists()
    kept = [line[1:] for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert sorted(kept) == sorted(sources)


def test_the_builder_steps_produce_a_working_operator_for_the_non_root_user(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Without a Docker engine, run the builder stage's own RUN commands here, on exactly the build
    context .dockerignore keeps, then start the result the way the final stage does: as UID 65532,
    with only the virtualenv on PATH and no byte code written."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    builder = stages()[0]
    runs = [" ".join(args.split()) for instruction, args in builder if instruction == "RUN"]
    assert runs == ["python -m venv /opt/venv",
                    "python -m pip wheel --no-deps --wheel-dir /wheels . && "
                    "/opt/venv/bin/pip install /wheels/spotpool-*.whl && "
                    "/opt/venv/bin/pip uninstall --yes pip"]
    context = tmp_path / "src"
    context.mkdir()
    shutil.copy(REPO / "pyproject.toml", context)
    shutil.copytree(REPO / "operator", context / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    # pytest's own temp root is private (0700); UID 65532 must be able to reach the venv, as in the image.
    image_root = Path(tempfile.mkdtemp(prefix="spotpool-image-"))
    request.addfinalizer(lambda: shutil.rmtree(image_root, ignore_errors=True))
    image_root.chmod(0o755)
    venv, wheels = image_root / "opt-venv", tmp_path / "wheels"
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # The image's interpreter is a system one (/usr/local/bin/python): so is this one. The test
    # runner's own Python may sit in a private home that UID 65532 cannot enter.
    system_python = shutil.which("python3.11", path="/usr/local/bin:/usr/bin")
    assert system_python, "a system Python 3.11 (Debian's python3.11) is needed to stand in for the image's"
    for command in (
        [system_python, "-m", "venv", str(venv)],
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), "."],
    ):
        subprocess.run(command, cwd=context, env=env, check=True, capture_output=True)
    wheel = next(wheels.glob("spotpool-*.whl"))
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], env=env, check=True,
                   capture_output=True, timeout=600)
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "--quiet", "--yes", "pip"], check=True,
                   capture_output=True)
    assert not (venv / "bin" / "pip").exists()

    final_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                 "HOME": "/nonexistent"}
    before = {p for p in venv.rglob("*.pyc")}
    proc = subprocess.run(["spotpool", "operator", "--help"], env=final_env, user=65532, group=65532,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--metrics-port" in proc.stdout and "--cluster-id" in proc.stdout
    assert {p for p in venv.rglob("*.pyc")} == before  # nothing written at run time

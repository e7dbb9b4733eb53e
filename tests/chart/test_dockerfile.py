"""deploy/Dockerfile, read statically (no Docker engine on this machine builds it): the final stage is
python:3.11-slim with the builder's virtualenv only, runs as the chart's non-root user, and starts
the operator; what the builder copies is in the build context."""

from __future__ import annotations

import re

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

# spotpool: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
# Go lives in /usr/local/go/bin on the machines this is built on; keep it reachable from any shell.
export PATH := $(PATH):/usr/local/go/bin
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all venv binaries system-deps image test test-unit test-integration test-e2e test-node demo bench sync-crds dashboard manifests generate clean

all: test

# The virtualenv with the package and its test extra; reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# etcd, kube-apiserver, kube-controller-manager, kubectl and helm, built from the Go module proxy
# into .cache/bin; a no-op when the pins in tools/*/go.sum have not changed.
binaries:
	tools/build-binaries.sh

# Debian packages the tests run for real: Prometheus, podman for the image, the test node's runc, CNI
# plugins, iptables and conntrack.
system-deps:
	tools/install-system-deps.sh

# ruff (pyflakes, pycodestyle, imports, bugbear, pyupgrade) and mypy (strict for planner/ and cloud/),
# configured in pyproject.toml; part of `make test`.
lint: venv
	$(VENV)/bin/ruff check operator tests benchmarks tools
	$(VENV)/bin/mypy

test: venv lint binaries system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: venv binaries
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv binaries system-deps
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The image and the chart on a real node (kubelet, containerd, kube-proxy, CoreDNS); needs root.
test-node: venv binaries system-deps
	$(PY) -m pytest tests/node $(PYTEST_ARGS)

# The operator image from deploy/Dockerfile, with podman (or docker); TAG=... names it.
image: system-deps
	tools/build-image.sh $(TAG)

# The main job: a local control plane (or the current kube context with DEMO_ARGS=--use-current-context),
# the CVM simulator, the operator, and the example pool converging live.
demo: venv binaries
	$(VENV)/bin/spotpool demo $(DEMO_ARGS)

bench: venv binaries
	$(PY) benchmarks/run_all.py

# Generated files, each checked by a test that fails when it is stale: the chart's copy of the CRD,
# the Grafana dashboard, and the plain manifests rendered from the chart.
sync-crds:
	mkdir -p charts/spotpool/files/crds
	cp crds/*.yaml charts/spotpool/files/crds/

dashboard: venv
	$(PY) -m spotpool.dashboard charts/spotpool/dashboards/spotpool.json

manifests: sync-crds binaries
	tools/render-manifests.sh

generate: sync-crds dashboard manifests

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis

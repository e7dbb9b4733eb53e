#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, when they are missing:
# - prometheus: the metrics tests scrape a running operator with a real Prometheus;
# - podman, runc, debootstrap: tools/build-image.sh builds the operator image from deploy/Dockerfile
#   without a Docker engine (runc, not crun: crun fails on these machines' cgroup v1 hierarchy), on a
#   base made by debootstrap where python:3.11-slim cannot be pulled;
# - iptables, conntrack, containernetworking-plugins: the test node's pod network (CNI bridge) and
#   kube-proxy's service routing, so the operator pod reaches the API server through its Service.
set -euo pipefail
wanted=(prometheus podman runc debootstrap iptables conntrack containernetworking-plugins)
missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install-system-deps: need root to apt-get install ${missing[*]} (or install them yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}" >&2

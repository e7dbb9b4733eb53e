#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, when they are missing:
# prometheus (the metrics tests scrape a running operator with a real Prometheus).
set -euo pipefail
missing=()
command -v prometheus >/dev/null || [[ -x /usr/bin/prometheus ]] || missing+=(prometheus)
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install-system-deps: need root to apt-get install ${missing[*]} (or install them yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}" >&2

#!/usr/bin/env bash
# Builds the test node's pod sandbox ("pause") image from tools/pause/pause.c: a static binary on an
# empty base, saved as an OCI archive the node's containerd imports (no registry is reachable here).
#
#   tools/build-pause-image.sh [TAG]     default TAG: localhost/spotpool-pause:1.0
# Prints the tag; the archive is .cache/image/pause.oci.tar.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:-localhost/spotpool-pause:1.0}
out=$root/.cache/image
mkdir -p "$out"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cc -static -Os -s -o "$context/pause" "$root/tools/pause/pause.c"
cp "$root/tools/pause/Containerfile" "$context/"
engine=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
"${engine[@]}" build -q -t "$tag" "$context" >/dev/null
rm -f "$out/pause.oci.tar"
"${engine[@]}" save -q --format oci-archive -o "$out/pause.oci.tar" "$tag" >/dev/null
echo "$tag"

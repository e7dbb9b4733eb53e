#!/usr/bin/env bash
# Builds the operator image from deploy/Dockerfile, unchanged, with podman (or docker when podman is
# missing), and saves it as an OCI archive that a node runtime loads without a registry.
#
#   tools/build-image.sh [TAG]           default TAG: localhost/spotpool:<chart appVersion>
#
# The Dockerfile starts FROM python:3.11-slim. Where that image cannot be pulled (no registry is
# reachable on the machines this project is built and tested on) an equivalent base is made from
# Debian's own packages: `debootstrap --variant=minbase` of bookworm with python3, python3-venv,
# python3-pip and ca-certificates, `python` linked to `python3`, then `podman import`ed. pip inside
# the build trusts the machine's CA bundle only when the base does, so the bundle `PIP_CERT` names
# (default /etc/ssl/certs/ca-certificates.crt) is copied into the base and named in its PIP_CERT.
# The base is cached in .cache/image/ and rebuilt only when this recipe changes.
#
# Output: the image in the engine's local store under TAG, and .cache/image/spotpool.oci.tar
# (`ctr images import`, `kind load image-archive`, `podman load` all read it). Prints the image size.
#
# Environment: SPOTPOOL_BASE=auto|pull|debian (auto: pull python:3.11-slim, else the Debian base),
# SPOTPOOL_IMAGE_ARCHIVE (where to write the archive).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache/image
mkdir -p "$cache"
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/spotpool/Chart.yaml")
tag=${1:-localhost/spotpool:$app_version}
archive=${SPOTPOOL_IMAGE_ARCHIVE:-$cache/spotpool.oci.tar}
base_mode=${SPOTPOOL_BASE:-auto}
upstream_base=docker.io/library/python:3.11-slim
debian_suite=bookworm
# The mirror this machine's apt already uses (it is the one known to be reachable), else Debian's.
apt_mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\/\{0,1\}\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
debian_mirror=${SPOTPOOL_DEBIAN_MIRROR:-${apt_mirror:-http://deb.debian.org/debian}}
debian_packages=python3,python3-venv,python3-pip,ca-certificates
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}

if command -v podman >/dev/null; then
  # runc, not crun: crun fails on these machines' cgroup v1 hierarchy. cgroupfs: no systemd here.
  engine=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
  # The default nproc limit (32768) is above the hard limit here, and raising it is refused.
  run_limits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  engine=(docker)
  run_limits=()
else
  echo "build-image: need podman (tools/install-system-deps.sh installs it) or a running docker" >&2
  exit 2
fi

# The Debian base: made once per recipe, kept as a tarball so a fresh podman store re-imports it in
# seconds instead of re-running debootstrap.
debian_base() {
  local recipe stamp name rootfs
  recipe="$debian_suite $debian_mirror $debian_packages $(sha256sum "$ca_bundle" | cut -c1-16) v1"
  stamp=$(echo "$recipe" | sha256sum | cut -c1-12)
  name=localhost/spotpool-python-base:$debian_suite-$stamp
  if "${engine[@]}" image exists "$name" 2>/dev/null; then echo "$name"; return; fi
  if [[ ! -f $cache/base-$stamp.tar ]]; then
    command -v debootstrap >/dev/null || {
      echo "build-image: debootstrap is missing (tools/install-system-deps.sh installs it)" >&2; exit 2; }
    [[ $(id -u) -eq 0 ]] || { echo "build-image: making the Debian base needs root (debootstrap)" >&2; exit 2; }
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    echo "build-image: debootstrap $debian_suite ($debian_packages) into $rootfs" >&2
    debootstrap --variant=minbase --include="$debian_packages" "$debian_suite" "$rootfs" "$debian_mirror" \
      > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    ln -sf python3 "$rootfs/usr/bin/python"
    cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # What a slim image leaves out: apt's lists and caches, documentation, locales.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    tar -C "$rootfs" --numeric-owner -cf "$cache/base-$stamp.tar.partial" .
    mv "$cache/base-$stamp.tar.partial" "$cache/base-$stamp.tar"
    rm -rf "$rootfs"
  fi
  "${engine[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$cache/base-$stamp.tar" "$name" >/dev/null
  echo "$name"
}

case $base_mode in
  pull) "${engine[@]}" pull "$upstream_base" >&2; base=$upstream_base ;;
  debian) base=$(debian_base) ;;
  auto)
    if "${engine[@]}" image exists "$upstream_base" 2>/dev/null || "${engine[@]}" pull "$upstream_base" >/dev/null 2>&1; then
      base=$upstream_base
    else
      echo "build-image: $upstream_base cannot be pulled here; using a base made from Debian packages" >&2
      base=$(debian_base)
    fi ;;
  *) echo "build-image: SPOTPOOL_BASE must be auto, pull or debian" >&2; exit 2 ;;
esac

started=$SECONDS
echo "build-image: building $tag from deploy/Dockerfile on $base" >&2
"${engine[@]}" build --network host "${run_limits[@]}" \
  --build-arg "PYTHON_IMAGE=$base" -f "$root/deploy/Dockerfile" -t "$tag" "$root" >&2
echo "build-image: built in $((SECONDS - started)) s" >&2

rm -f "$archive"
"${engine[@]}" save -q --format oci-archive -o "$archive" "$tag" >/dev/null 2>&1 ||
  "${engine[@]}" save -o "$archive" "$tag" >/dev/null
size=$("${engine[@]}" image inspect --format '{{.Size}}' "$tag")
echo "build-image: $tag is $((size / 1000000)) MB; archive $archive" >&2
echo "$tag"

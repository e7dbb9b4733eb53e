#!/usr/bin/env bash
# Builds the real control-plane binaries the tests and the demo run, from the Go module proxy:
# etcd, kube-apiserver, kube-controller-manager, kubectl and helm, and the test node's kube-scheduler,
# kubelet, kube-proxy, containerd (with ctr and its runc shim) and CoreDNS, each pinned by the
# go.mod/go.sum in tools/<dir>/ (the node's Kubernetes binaries share the control plane's pins).
# Output goes to $SPOTPOOL_BIN_DIR (default .cache/bin, git-ignored).
# A binary is rebuilt only when its pin or its build recipe changes: each build writes a stamp
# holding the sha256 of go.mod, go.sum and the recipe line, and a matching stamp means "built".
#
#   tools/build-binaries.sh            build whatever is missing or stale
#   tools/build-binaries.sh --check    exit 1 if anything would be built (prints what)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SPOTPOOL_BIN_DIR:-$root/.cache/bin}
mkdir -p "$bin"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
command -v go >/dev/null || { echo "build-binaries: the Go toolchain (go) is not on PATH" >&2; exit 2; }

# The recipe of each wrapper: the packages it builds and the binaries they become. Changing a line
# here changes that wrapper's stamp and so rebuilds it.
declare -A recipe=(
  [etcd]="go.etcd.io/etcd/server/v3=etcd"
  [kube]="k8s.io/kubernetes/cmd/kube-apiserver=kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager=kube-controller-manager k8s.io/kubernetes/cmd/kubectl=kubectl"
  [helm]="helm.sh/helm/v4/cmd/helm=helm"
  [kubenode]="k8s.io/kubernetes/cmd/kube-scheduler=kube-scheduler k8s.io/kubernetes/cmd/kubelet=kubelet k8s.io/kubernetes/cmd/kube-proxy=kube-proxy"
  [containerd]="github.com/containerd/containerd/v2/cmd/containerd=containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2=containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr=ctr"
  [coredns]=".=coredns"
)
# The tools/ directory of each recipe: the node's Kubernetes binaries use the control plane's pins.
declare -A dir_of=([etcd]=etcd [kube]=kube [helm]=helm [kubenode]=kube [containerd]=containerd [coredns]=coredns)
build_flags="-trimpath -tags=selinux,notest,grpcnotrace -s -w"

stamp_of() {
  { cat "$root/tools/${dir_of[$1]}/go.mod" "$root/tools/${dir_of[$1]}/go.sum"; echo "${recipe[$1]} $build_flags"; } |
    sha256sum | cut -d' ' -f1
}

version_of() {  # the pinned version of module $2 in wrapper $1
  (cd "$root/tools/${dir_of[$1]}" && go list -m -f '{{.Version}}' "$2")
}

is_stale() {
  local name=$1 pair
  for pair in ${recipe[$name]}; do [[ -x "$bin/${pair#*=}" ]] || return 0; done
  [[ "$(cat "$bin/.$name.stamp" 2>/dev/null)" != "$(stamp_of "$name")" ]]
}

ldflags_of() {
  local v minor now x=""
  case $1 in
    etcd) echo "-X go.etcd.io/etcd/api/v3/version.GitSHA=$(version_of etcd go.etcd.io/etcd/server/v3)" ;;
    helm) echo "-X helm.sh/helm/v4/internal/version.version=$(version_of helm helm.sh/helm/v4)" ;;
    containerd) echo "-X github.com/containerd/containerd/v2/version.Version=$(version_of containerd github.com/containerd/containerd/v2)" ;;
    kube|kubenode)
      # Without these, /version says v0.0.0-master and helm refuses charts with a kubeVersion.
      v=$(version_of kube k8s.io/kubernetes); minor=${v#v1.}; minor=${minor%%.*}
      now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x="$x -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$now"
      done
      echo "$x" ;;
  esac
}

build() {
  local name=$1 started=$SECONDS pair ldflags
  ldflags="-s -w $(ldflags_of "$name")"
  for pair in ${recipe[$name]}; do
    echo "building ${pair#*=} ($name)" >&2
    (cd "$root/tools/${dir_of[$name]}" &&
      go build -p "$(nproc)" -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" \
        -o "$bin/${pair#*=}" "${pair%%=*}")
  done
  stamp_of "$name" > "$bin/.$name.stamp"
  echo "built $name in $((SECONDS - started)) s" >&2
}

stale=()
for name in etcd kube helm kubenode containerd coredns; do is_stale "$name" && stale+=("$name"); done

if [[ "${1:-}" == "--check" ]]; then
  ((${#stale[@]} == 0)) && { echo "all binaries up to date in $bin"; exit 0; }
  echo "stale: ${stale[*]}"; exit 1
fi
for name in "${stale[@]}"; do build "$name"; done
echo "binaries in $bin: $(cd "$bin" && ls | tr '\n' ' ')" >&2

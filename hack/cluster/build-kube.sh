#!/usr/bin/env bash
# Builds the Kubernetes control plane and kubelet from Debian's own `kubernetes` source
# package with Debian's golang, once per source version, and prints the bin directory.
# The binaries are cached under /var/cache so that a rerun (and CI on the same machine)
# skips the ~10-minute build.
set -euo pipefail

cache=${HAMI_KUBE_CACHE:-/var/cache/hami-rs/kube}
components=(kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl)

log() { echo "build-kube: $*" >&2; }

ensure_deb_src() {
    if apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version:'; then return; fi
    log "enabling deb-src for bookworm"
    cat >/etc/apt/sources.list.d/hami-rs-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
}

ensure_tools() {
    local missing=()
    command -v go >/dev/null || missing+=(golang-go)
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v etcd >/dev/null || missing+=(etcd-server)
    [ -d "$reflect2" ] || missing+=(golang-github-modern-go-reflect2-dev)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Kubernetes 1.20 vendors reflect2 1.0.1, whose map iterator does not match Go >= 1.18's
# runtime: with Debian's Go 1.19 the apiserver dies (SIGSEGV in mapiterinit) the first
# time it encodes certain maps, e.g. a pod through an admission webhook. Debian packages
# reflect2 1.0.2, which has the fix; it replaces the vendored copy.
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2

ensure_deb_src
version=$(apt-cache showsrc kubernetes | awk '/^Version:/ { print $2; exit }')
# Bump when the build below changes, so a cached build of the old recipe is not used.
recipe=2
out="$cache/$version-r$recipe/bin"
complete=1
for c in "${components[@]}"; do [ -x "$out/$c" ] || complete=0; done
if [ "$complete" = 1 ]; then
    echo "$out"
    exit 0
fi

ensure_tools
src="$cache/src-$version"
if [ ! -d "$src/cmd/kubelet" ]; then
    log "fetching the kubernetes $version source package"
    rm -rf "$src" "$cache/src-work"
    mkdir -p "$cache/src-work"
    (cd "$cache/src-work" && apt-get source -qq "kubernetes=$version" >&2)
    mv "$cache"/src-work/kubernetes-*/ "$src"
    rm -rf "$cache/src-work"
fi

rsync -a --delete --exclude go.mod --exclude '*_test.go' "$reflect2/" "$src/vendor/github.com/modern-go/reflect2/"

log "building ${components[*]} (about 10 minutes on 2 cores, once)"
# The same GOPATH layout debian/rules sets up; CGO off as Debian builds it.
mkdir -p "$src/.go/src/k8s.io"
[ -L "$src/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$src/.go/src/k8s.io/kubernetes"
(
    cd "$src"
    export GOPATH="$src/.go" CGO_ENABLED=0 HOME="$src/.home" GOFLAGS=-mod=vendor
    mkdir -p "$HOME"
    make WHAT="${components[*]/#/cmd/}" >&2
)
mkdir -p "$out.tmp"
for c in "${components[@]}"; do cp "$src/_output/bin/$c" "$out.tmp/$c"; done
rm -rf "$out" && mv "$out.tmp" "$out"
# The tree and its Go build cache are ~2 GiB; the binaries are all that is kept.
rm -rf "$src"
echo "$out"

#!/usr/bin/env bash
# Installs what the demo and the test suite need on a fresh Debian machine, as root.
# Idempotent: it only calls apt-get when something is missing.
set -euo pipefail

# binary -> Debian package that provides it
declare -A PROVIDER=(
    [runc]=runc
    [crun]=crun
    [podman]=podman
    [containerd]=containerd
    [jq]=jq
    [protoc]=protobuf-compiler
    [gcc]=gcc
    [g++]=g++
    [readelf]=binutils
    [unshare]=util-linux
    [ldd]=libc-bin
    # the webhook's HTTPS test makes its self-signed certificate with it
    [openssl]=openssl
    [yamllint]=yamllint
    # the real-cluster tests: etcd for the API server, ip for the pod bridge
    [etcd]=etcd-server
    [etcdctl]=etcd-client
    [ip]=iproute2
)

missing=()
for bin in "${!PROVIDER[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("${PROVIDER[$bin]}")
done
# The test kit needs the *static* busybox: the dynamic one from `busybox` would do,
# but busybox-static is what the docs promise and what CI exercises.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || missing+=(busybox-static)

if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "hack/prereqs.sh: missing packages: ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "hack/prereqs.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq runc crun podman containerd busybox-static jq protobuf-compiler gcc g++ binutils util-linux openssl yamllint etcd-server etcd-client iproute2 >/dev/null
fi

for tool in cargo rustfmt cargo-clippy; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "hack/prereqs.sh: $tool not found: a Rust toolchain with rustfmt and clippy is required" >&2
        exit 1
    fi
done

#!/usr/bin/env bash
# A one-node Kubernetes cluster on 127.0.0.1, for the real-cluster tests and by hand:
#
#   hack/cluster.sh up   DIR   # etcd, kube-apiserver, kube-controller-manager, two
#                              # kube-schedulers (default, and hami-scheduler with
#                              # hami-controller as its extender), containerd, kubelet
#   hack/cluster.sh down DIR   # stops them all by PID and removes what they left
#   hack/cluster.sh containerd-config DIR   # prints the containerd config up generates
#
# Everything lives under DIR: certificates (openssl), kubeconfigs, logs, etcd data,
# containerd's root and kubelet's root. `DIR/env` exports KUBECONFIG and the
# containerd socket. The binaries come from hack/cluster/build-kube.sh (Debian's
# kubernetes source, built once and cached) unless KUBE_BIN names a directory.
#
# Knobs (environment):
#   KUBE_BIN                  directory with kube-apiserver, kubelet, ... (default: build)
#   HAMI_CLUSTER_SCHEDULER_CONFIG
#                             KubeSchedulerConfiguration for hami-scheduler (the chart's
#                             rendered ConfigMap); default: one with the chart's extender
#   HAMI_CLUSTER_CONTAINERD_CONFIG
#                             containerd config to use instead of the generated one (e.g.
#                             after `hami-oci-hook install --runtime containerd` merged it);
#                             it must use DIR/containerd/{root,state,containerd.sock}
#   HAMI_CLUSTER_NODE         node name (default: hami-e2e)
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 up|down|containerd-config DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
node=${HAMI_CLUSTER_NODE:-hami-e2e}
etcd_port=12379
apiserver_port=16443
kubelet_port=20250
cgroup_root=hami-e2e
bridge=hamie2e0

log() { echo "cluster: $*" >&2; }

pidfile() { echo "$dir/pids/$1.pid"; }

# Starts "$@" in the background as component $name, output in DIR/logs/$name.log.
start() {
    local name=$1
    shift
    mkdir -p "$dir/logs" "$dir/pids"
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            log "$what did not come up within ${seconds}s"
            for f in "$dir"/logs/*.log; do
                echo "---- ${f##*/} (last 30 lines)" >&2
                tail -30 "$f" >&2 || true
            done
            exit 1
        fi
        sleep 0.5
    done
}

# --- certificates -------------------------------------------------------------
cert() {
    # cert NAME SUBJECT [SANS]
    local name=$1 subject=$2 sans=${3:-}
    local pki=$dir/pki
    openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subject" \
        -out "$pki/$name.csr" 2>/dev/null
    local ext=$pki/$name.ext
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
    } >"$ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 2 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
}

kubeconfig() {
    # kubeconfig NAME (a cert of that name exists)
    local name=$1
    cat >"$dir/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: hami-e2e
    cluster:
      server: https://127.0.0.1:$apiserver_port
      certificate-authority: $dir/pki/ca.crt
users:
  - name: $name
    user:
      client-certificate: $dir/pki/$name.crt
      client-key: $dir/pki/$name.key
contexts:
  - name: $name
    context: {cluster: hami-e2e, user: $name}
current-context: $name
EOF
}

make_pki() {
    local pki=$dir/pki
    mkdir -p "$pki"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -subj "/CN=hami-e2e-ca" \
        -days 2 -out "$pki/ca.crt" 2>/dev/null
    cert apiserver "/CN=kube-apiserver" \
        "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    cert admin "/O=system:masters/CN=hami-e2e-admin"
    # Without per-controller service accounts (none are set up here) the controllers
    # act as this user; system:kube-controller-manager alone may not taint nodes.
    cert kube-controller-manager "/O=system:masters/CN=system:kube-controller-manager"
    cert kube-scheduler "/CN=system:kube-scheduler"
    cert kubelet "/O=system:nodes/CN=system:node:$node" "IP:127.0.0.1,IP:$node_ip,DNS:$node"
    # hami-controller and hami-node as host processes: their own users, bound to the
    # chart's ClusterRoles by the tests (not masters, so RBAC is exercised).
    cert hami-controller "/CN=hami-controller"
    cert hami-node "/CN=hami-node"
    cert webhook "/CN=hami-webhook" "IP:127.0.0.1,DNS:localhost"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    for n in admin kube-controller-manager kube-scheduler kubelet hami-controller hami-node; do
        kubeconfig "$n"
    done
}

# --- configs -------------------------------------------------------------------
default_scheduler_config() {
    cat <<EOF
apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
profiles:
  - schedulerName: hami-scheduler
extenders:
  - urlPrefix: "http://127.0.0.1:8888"
    filterVerb: filter
    bindVerb: bind
    nodeCacheCapable: true
    weight: 1
    httpTimeout: 30s
    enableHTTPS: false
    managedResources:
      - {name: nvidia.com/gpu, ignoredByScheduler: true}
      - {name: nvidia.com/gpumem, ignoredByScheduler: true}
      - {name: nvidia.com/gpumem-percentage, ignoredByScheduler: true}
      - {name: nvidia.com/gpucores, ignoredByScheduler: true}
      - {name: nvidia.com/priority, ignoredByScheduler: true}
      - {name: huawei.com/Ascend910B, ignoredByScheduler: true}
      - {name: huawei.com/Ascend910B-memory, ignoredByScheduler: true}
EOF
}

# The chart's scheduler config names no kubeconfig (in-cluster); here the process runs
# on the host, so add clientConnection. Leader election is off: one replica.
scheduler_config() {
    local source=$1 out=$2 port=$3
    {
        echo "clientConnection:"
        echo "  kubeconfig: $dir/kube-scheduler.kubeconfig"
        # Two schedulers on one host: each its own health and metrics port.
        echo "healthzBindAddress: 127.0.0.1:$port"
        echo "metricsBindAddress: 127.0.0.1:$port"
        sed -e '/^leaderElection:/,/^[^ ]/{/^leaderElection:/d;/^  /d}' "$source"
        echo "leaderElection:"
        echo "  leaderElect: false"
    } >"$out"
}

containerd_config() {
    local c=$dir/containerd
    mkdir -p "$c/cni/conf" "$c/root" "$c/state"
    # A bridge with host-local addresses: HAMi's example pods use the pod network.
    # Nothing routes out of it; the pods need only their own address.
    cat >"$c/cni/conf/10-hami-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "hami-e2e", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.77.0/24"}]], "dataDir": "$c/cni/ipam"}}
]}
EOF
    cat <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "hami.local/e2e:test"
  restrict_oom_score_adj = true
  disable_apparmor = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$c/cni/conf"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
EOF
}

kubelet_config() {
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $dir/pki/kubelet.crt
tlsPrivateKeyFile: $dir/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
# Pods' cgroups under their own root, so that down removes exactly those.
cgroupRoot: /$cgroup_root
failSwapOn: false
resolvConf: /etc/resolv.conf
# A test machine's disk is often more than 85% full: neither evict nor collect images.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
nodeStatusUpdateFrequency: 4s
EOF
}

# kubelet (cgroupfs) requires its cgroup root to exist in every hierarchy.
make_cgroup_root() {
    local h
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [ -e "$h/cgroup.procs" ] || continue
        mkdir -p "$h/$cgroup_root"
        if [ -e "$h/cpuset.cpus" ] && [ -z "$(cat "$h/$cgroup_root/cpuset.cpus")" ]; then
            cat "$h/cpuset.cpus" >"$h/$cgroup_root/cpuset.cpus"
            cat "$h/cpuset.mems" >"$h/$cgroup_root/cpuset.mems"
        fi
    done
}

# --- up / down -----------------------------------------------------------------
up() {
    if [ -e "$dir/pids" ]; then
        log "$dir already holds a cluster: run '$0 down $dir' first"
        exit 1
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local bin=${KUBE_BIN:-$("$here/cluster/build-kube.sh")}
    # kubelet refuses a loopback node IP, and the API server reaches kubelet there (logs).
    node_ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | head -1)
    node_ip=${node_ip:-127.0.0.1}
    make_pki

    start etcd etcd --name hami-e2e --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
        --initial-cluster hami-e2e=http://127.0.0.1:12380
    wait_for etcd 30 etcdctl --endpoints "http://127.0.0.1:$etcd_port" endpoint health

    start kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address "$node_ip" --secure-port "$apiserver_port" --insecure-port 0 \
        --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
        --client-ca-file "$dir/pki/ca.crt" \
        --kubelet-client-certificate "$dir/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$dir/pki/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP \
        --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range 10.96.0.0/24 \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota \
        --allow-privileged=true
    export KUBECONFIG=$dir/admin.kubeconfig
    wait_for kube-apiserver 90 "$bin/kubectl" get --raw /readyz

    start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig "$dir/kube-controller-manager.kubeconfig" \
        --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
        --use-service-account-credentials=false --leader-elect=false --port 0 --secure-port 0 \
        --controllers '*,-nodeipam,-service,-route,-cloud-node-lifecycle'

    local default_cfg=$dir/default-scheduler.yaml
    cat >"$default_cfg" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1beta1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $dir/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
healthzBindAddress: 127.0.0.1:10351
metricsBindAddress: 127.0.0.1:10351
EOF
    start default-scheduler "$bin/kube-scheduler" --config "$default_cfg" --port 0 --secure-port 0

    local source=${HAMI_CLUSTER_SCHEDULER_CONFIG:-}
    if [ -z "$source" ]; then
        source=$dir/hami-scheduler.source.yaml
        default_scheduler_config >"$source"
    fi
    scheduler_config "$source" "$dir/hami-scheduler.yaml" 10352
    start hami-scheduler "$bin/kube-scheduler" --config "$dir/hami-scheduler.yaml" --port 0 --secure-port 0

    local ccfg=${HAMI_CLUSTER_CONTAINERD_CONFIG:-}
    mkdir -p "$dir/containerd"
    containerd_config >"$dir/containerd/generated.toml"
    if [ -z "$ccfg" ]; then ccfg=$dir/containerd/generated.toml; fi
    start containerd containerd --config "$ccfg"
    wait_for containerd 30 ctr --address "$dir/containerd/containerd.sock" version

    mkdir -p "$dir/kubelet"
    make_cgroup_root
    kubelet_config >"$dir/kubelet-config.yaml"
    start kubelet "$bin/kubelet" \
        --config "$dir/kubelet-config.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
        --container-runtime remote --container-runtime-endpoint "unix://$dir/containerd/containerd.sock" \
        --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" \
        --hostname-override "$node" --node-ip "$node_ip" --v 2
    wait_for "node $node" 90 "$bin/kubectl" get node "$node"
    wait_for "node $node Ready" 90 sh -c \
        "'$bin/kubectl' get node '$node' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
    wait_for "the default service account" 60 "$bin/kubectl" -n default get serviceaccount default

    local name
    for name in etcd kube-apiserver kube-controller-manager default-scheduler hami-scheduler containerd kubelet; do
        if ! kill -0 "$(cat "$(pidfile "$name")")" 2>/dev/null; then
            log "$name exited:"
            tail -20 "$dir/logs/$name.log" >&2
            exit 1
        fi
    done
    cat >"$dir/env" <<EOF
export KUBECONFIG=$dir/admin.kubeconfig
export KUBE_BIN=$bin
export HAMI_CLUSTER_DIR=$dir
export HAMI_CLUSTER_NODE=$node
export CONTAINERD_ADDRESS=$dir/containerd/containerd.sock
EOF
    log "up: $("$bin/kubectl" version --short 2>/dev/null | tail -1); node $node Ready; . $dir/env"
}

down() {
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    # kubelet first, so it does not restart what the rest leaves.
    for name in kubelet hami-scheduler default-scheduler kube-controller-manager kube-apiserver etcd containerd; do
        local f
        f=$(pidfile "$name")
        [ -f "$f" ] || continue
        local pid
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    # The shims outlive containerd; each recorded its PID under the state dir.
    find "$dir/containerd/state" -name shim.pid 2>/dev/null | while read -r f; do
        kill -KILL "$(cat "$f")" 2>/dev/null || true
    done
    # Containers kubelet created: the cgroups under its root, emptied then removed.
    for hierarchy in /sys/fs/cgroup/*/$cgroup_root /sys/fs/cgroup/$cgroup_root; do
        [ -d "$hierarchy" ] || continue
        find "$hierarchy" -name cgroup.procs 2>/dev/null | while read -r procs; do
            while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$procs"
        done
    done
    sleep 0.5
    for hierarchy in /sys/fs/cgroup/*/$cgroup_root /sys/fs/cgroup/$cgroup_root; do
        [ -d "$hierarchy" ] || continue
        find "$hierarchy" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    # Mounts left under the cluster dir (overlay snapshots, pod volumes), deepest first.
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    ip link delete "$bridge" 2>/dev/null || true
    rm -rf "$dir/pids"
    # kubelet 1.20 serves device plugins from this fixed path whatever its root dir.
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    log "down: $dir"
}

case "$cmd" in
up) up ;;
down) down ;;
containerd-config)
    # The config `up` would generate, for a caller that merges into it first.
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    containerd_config
    ;;
*)
    echo "usage: $0 up|down|containerd-config DIR" >&2
    exit 2
    ;;
esac

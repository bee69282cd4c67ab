#!/usr/bin/env bash
# Builds the two images the Helm chart deploys, tagged with the chart's
# appVersion:
#   hami-rs/hami-controller:<version>   (deploy/images/Containerfile.controller)
#   hami-rs/hami-node:<version>         (deploy/images/Containerfile.node)
# Needs podman (or docker: BUILDER=docker) and access to the base images.
set -euo pipefail
cd "$(dirname "$0")/.."
builder=${BUILDER:-podman}
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/hami/Chart.yaml)
for image in controller node; do
    "$builder" build -f "deploy/images/Containerfile.$image" -t "hami-rs/hami-$image:$version" .
done
echo "built hami-rs/hami-controller:$version and hami-rs/hami-node:$version"

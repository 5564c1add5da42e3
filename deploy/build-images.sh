#!/usr/bin/env bash
# Build Binormal's images where no image registry is reachable (only Debian's package mirror):
#   1. a Debian bookworm base: `debootstrap --variant=minbase` + `docker import` (built once, kept by tag)
#   2. Redis 7 on it: deploy/redis/Dockerfile (Debian's redis-server; kept by tag)
#   3. the app on it: deploy/Dockerfile from the wheelhouse in deploy/wheelhouse/ (`make wheelhouse`)
# Run as root (debootstrap) from anywhere; a running dockerd is needed. Tags (environment):
#   BINORMAL_BASE_IMAGE  (default binormal-local/debian:bookworm)
#   BINORMAL_REDIS_IMAGE (default binormal-local/redis:7-bookworm)
#   BINORMAL_IMAGE       (default binormal-local/binormal:dev); rebuilt every time, the image it
#                        replaces is removed (unless a container still uses it); its build stage
#                        is kept as BINORMAL_IMAGE-build (the layer cache of the next build)
# REBUILD_BASE=1 rebuilds 1 and 2 even when their tags exist.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${BINORMAL_BASE_IMAGE:-binormal-local/debian:bookworm}
redis=${BINORMAL_REDIS_IMAGE:-binormal-local/redis:7-bookworm}
app=${BINORMAL_IMAGE:-binormal-local/binormal:dev}
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, works with Debian's docker.io

have() { docker image inspect "$1" >/dev/null 2>&1; }
step() { printf '[build-images] %4ss %s\n' "$SECONDS" "$*" >&2; }

if [ "${REBUILD_BASE:-0}" = 1 ] || ! have "$base"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  rootfs=$(mktemp -d /tmp/binormal-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  step "debootstrap --variant=minbase bookworm -> $base"
  debootstrap --variant=minbase bookworm "$rootfs" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

if [ "${REBUILD_BASE:-0}" = 1 ] || ! have "$redis"; then
  step "Redis from Debian's package -> $redis"
  docker build -q --build-arg BASE_IMAGE="$base" -t "$redis" deploy/redis >/dev/null
fi

ls deploy/wheelhouse/binormal-*.whl >/dev/null 2>&1 || { echo "no wheelhouse: run make wheelhouse" >&2; exit 1; }
old=$(docker image inspect -f '{{.Id}}' "$app" 2>/dev/null || true)
step "the app from deploy/wheelhouse -> $app"
# The build stage is tagged too ($app-build), so its layers (python3-venv from apt) stay cached.
docker build -q --build-arg BASE_IMAGE="$base" -f deploy/Dockerfile --target build -t "$app-build" . >/dev/null
docker build -q --build-arg BASE_IMAGE="$base" -f deploy/Dockerfile -t "$app" . >/dev/null
new=$(docker image inspect -f '{{.Id}}' "$app")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  docker image rm "$old" >/dev/null 2>&1 || step "kept the replaced image $old (still in use)"
fi
# Build stages replaced by this one are left untagged: drop ours (by label), the tagged one stays.
docker image prune -f --filter label=org.binormal.stage=build >/dev/null
step "done: $base $redis $app"

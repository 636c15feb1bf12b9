#!/usr/bin/env bash
# Container engine for the docker provider: Podman's Docker-compatible API on a
# project-local unix socket, plus the `sandqueue-python` test image.
# Idempotent: installs, configures, starts and builds only what is missing.
#
# Why a project-local containers.conf: on this kind of host (cgroup v1, no
# systemd, no CAP_SYS_RESOURCE) Podman's defaults fail — crun refuses hybrid
# cgroups, the default nofile ulimit is above the hard limit, journald and the
# systemd cgroup manager are absent.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
PODMAN_DIR="$ROOT/.sandqueue/podman"
IMAGES_DIR="$ROOT/.sandqueue/images"
SOCK="$PODMAN_DIR/podman.sock"
CONF="$PODMAN_DIR/containers.conf"
IMAGE="${SANDQUEUE_TEST_IMAGE:-sandqueue-python}"

log() { printf '[setup:podman] %s\n' "$*"; }

if [[ "${SANDQUEUE_SETUP_EXTRAS:-}" == "none" ]]; then
  log "skipped (SANDQUEUE_SETUP_EXTRAS=none): no container engine for the docker provider"
  exit 0
fi

# --- packages -----------------------------------------------------------------
need=()
for pair in podman:podman runc:runc debootstrap:debootstrap curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- configuration --------------------------------------------------------------
mkdir -p "$PODMAN_DIR" "$IMAGES_DIR"
# Root storage/run dirs: on a fresh VM or CI box without a prior podman run
# (and without systemd-tmpfiles) these may not exist yet.
if [[ $(id -u) -eq 0 ]]; then
  mkdir -p /var/lib/containers/storage /run/containers/storage /run/libpod
fi
cat >"$CONF.tmp" <<CONF
# Written by scripts/setup.d/podman.sh; regenerated on every run.
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[containers]
# At or below the hard limit: the service cannot raise rlimits.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
CONF
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF="$CONF"

# --- service ----------------------------------------------------------------------
ping_sock() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ping_sock; then
  log "podman service answers on $SOCK"
else
  log "starting podman system service on $SOCK"
  rm -f "$SOCK"
  # setsid + nohup: the service outlives this script and the shell that ran it.
  # Started from its own directory: conmon drops files such as "oom" into
  # its working directory when a container is OOM-killed.
  setsid nohup env -C "$PODMAN_DIR" podman system service --time=0 "unix://$SOCK" \
    >>"$PODMAN_DIR/service.log" 2>&1 </dev/null &
  echo $! >"$PODMAN_DIR/service.pid"
  for _ in $(seq 1 100); do ping_sock && break; sleep 0.1; done
  if ! ping_sock; then
    echo "podman service did not answer on $SOCK; see $PODMAN_DIR/service.log" >&2
    exit 1
  fi
fi
export DOCKER_HOST="unix://$SOCK"

# --- test image -------------------------------------------------------------------
if curl -fsS --unix-socket "$SOCK" "http://d/v1.41/images/$IMAGE/json" >/dev/null 2>&1; then
  log "image $IMAGE present"
else
  log "building image $IMAGE (debootstrap, cached under .sandqueue/images)"
  # scripts/setup builds dist/ first; when run alone, compile (tsc emits even
  # when someone else's file has a type error, hence the `|| true`).
  [[ -f dist/cli/image-command.js ]] || npx tsc -p tsconfig.json >/dev/null 2>&1 || true
  node --input-type=module -e '
    const { imageCommand } = await import(process.argv[1]);
    process.exitCode = await imageCommand(["build", process.argv[2]], process.env);
  ' "$ROOT/dist/cli/image-command.js" "$IMAGE"
fi

log "ready; use: export DOCKER_HOST=unix://$SOCK CONTAINERS_CONF=$CONF"
echo "DOCKER_HOST=unix://$SOCK"

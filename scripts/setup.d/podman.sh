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
# conmon, with a cheap exit command for sandqueue's containers. Podman has
# conmon run an exit command (`podman container cleanup`, a full podman CLI
# start: ~40 ms of CPU) after every container exits, also when it exits
# because it is being force-removed, which cleans up itself. The docker
# provider's containers (named `sandqueue-<uuid>`, providers/docker) only
# ever exit that way: their init never exits on its own. For those the
# wrapper hands conmon `exit-command` instead, which waits a second and runs
# the real cleanup only if the container still exists then
# (docs/PERFORMANCE.md, "Docker provider"). Other containers keep Podman's
# exit command as is: conmon waits for it, and an attached `podman run`
# waits for conmon, so a delay there would show.
REAL_CONMON=""
for c in /usr/libexec/podman/conmon /usr/local/libexec/podman/conmon /usr/bin/conmon /usr/sbin/conmon /usr/local/bin/conmon; do
  [[ -x "$c" ]] && { REAL_CONMON="$c"; break; }
done
[[ -n "$REAL_CONMON" ]] || REAL_CONMON="$(command -v conmon || true)"
if [[ -z "$REAL_CONMON" ]]; then
  echo "conmon not found (it comes with the podman package)" >&2
  exit 1
fi
cat >"$PODMAN_DIR/exit-command.tmp" <<'SH'
#!/bin/sh
# Written by scripts/setup.d/podman.sh: conmon's exit command. $1 is the
# podman binary Podman named; the rest are its arguments, ending with the
# container id. Skips the cleanup when the container is gone a second after
# it exited (a forced removal, which cleans up itself); otherwise, or when
# the storage layout is not the one expected, runs it.
podman=$1
shift
sleep 1
prev=; runroot=; id=
for a do
  [ "$prev" = --runroot ] && runroot=$a
  prev=$a; id=$a
done
layout=
for d in "$runroot"/*-containers; do
  [ -d "$d" ] || continue
  layout=1
  [ -d "$d/$id" ] && exec "$podman" "$@"
done
[ -n "$layout" ] || exec "$podman" "$@"
exit 0
SH
cat >"$PODMAN_DIR/conmon.tmp" <<SH
#!/bin/sh
# Written by scripts/setup.d/podman.sh: conmon, with exit-command (next to
# this file) in front of the exit command Podman asks for when the
# container is one of sandqueue's (named sandqueue-*).
prev=; name=
for a do
  [ "\$prev" = -n ] && name=\$a
  prev=\$a
done
case \$name in sandqueue-*) ;; *) exec "$REAL_CONMON" "\$@" ;; esac
first=1; prev=
for a do
  if [ \$first = 1 ]; then set --; first=0; fi
  if [ "\$prev" = --exit-command ]; then
    set -- "\$@" "$PODMAN_DIR/exit-command" --exit-command-arg "\$a"
  else
    set -- "\$@" "\$a"
  fi
  prev=\$a
done
exec "$REAL_CONMON" "\$@"
SH
chmod 755 "$PODMAN_DIR/exit-command.tmp" "$PODMAN_DIR/conmon.tmp"
mv "$PODMAN_DIR/exit-command.tmp" "$PODMAN_DIR/exit-command"
mv "$PODMAN_DIR/conmon.tmp" "$PODMAN_DIR/conmon"

cat >"$CONF.tmp" <<CONF
# Written by scripts/setup.d/podman.sh; regenerated on every run.
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
conmon_path = ["$PODMAN_DIR/conmon"]

[containers]
# At or below the hard limit: the service cannot raise rlimits.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
CONF
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF="$CONF"

# --- service ----------------------------------------------------------------------
ping_sock() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
# The service reads containers.conf once, at start: one that answers but was
# started with another configuration (or by an older version of this
# script) is restarted. Only the pid this script recorded is stopped, and
# only when it is a podman service on our socket.
CONF_HASH="$(cat "$CONF" "$PODMAN_DIR/conmon" "$PODMAN_DIR/exit-command" | sha256sum | cut -c1-16)"
if ping_sock && [[ "$(cat "$PODMAN_DIR/service.conf-hash" 2>/dev/null)" != "$CONF_HASH" ]]; then
  old="$(cat "$PODMAN_DIR/service.pid" 2>/dev/null || true)"
  if [[ "$old" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -qF "system service --time=0 unix://$SOCK"; then
    log "containers.conf changed: restarting the podman service (pid $old)"
    kill "$old"
    for _ in $(seq 1 100); do [[ -d "/proc/$old" ]] || break; sleep 0.1; done
  else
    log "containers.conf changed, but the service on $SOCK is not the one this script started; restart it yourself"
  fi
fi
if ping_sock; then
  log "podman service answers on $SOCK"
else
  log "starting podman system service on $SOCK"
  rm -f "$SOCK"
  # setsid + nohup: the service outlives this script and the shell that ran it.
  # Started from its own directory: conmon drops files such as "oom" into
  # its working directory when a container is OOM-killed. Descriptors above
  # 2 are closed: one inherited from the caller (a `flock` around the setup)
  # would otherwise be held for the service's lifetime.
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid nohup env -C "$PODMAN_DIR" podman system service --time=0 "unix://$SOCK" \
      >>"$PODMAN_DIR/service.log" 2>&1 </dev/null
  ) &
  echo $! >"$PODMAN_DIR/service.pid"
  echo "$CONF_HASH" >"$PODMAN_DIR/service.conf-hash"
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

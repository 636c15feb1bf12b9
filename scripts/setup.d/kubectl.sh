#!/usr/bin/env bash
# Debian's kubectl (package kubernetes-client, 1.20) for the Kubernetes
# stand-in's tests (test/integration/kubernetes-standin.test.ts): they check
# that a real kubectl can get, create and delete pods through the stand-in.
#
# When /usr/bin/kubectl is free, the package is installed with apt-get. When
# another package owns that path (some images ship Google Cloud SDK's
# `kubectl` dispatcher there, and dpkg refuses to overwrite it), the Debian
# package is fetched with `apt-get download` and unpacked under
# .sandqueue/kubernetes-client/ instead, leaving the system's kubectl alone.
# Prints the path the tests use; idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[setup:kubectl] %s\n' "$*"; }

if [[ "${SANDQUEUE_SETUP_EXTRAS:-}" == "none" ]]; then
  log "skipped (SANDQUEUE_SETUP_EXTRAS=none): no kubectl for the Kubernetes stand-in's tests"
  exit 0
fi

LOCAL_DIR=".sandqueue/kubernetes-client"
LOCAL_BIN="$LOCAL_DIR/usr/bin/kubectl"

owner_of_system_kubectl() {
  dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 | head -n1 || true
}

if [[ -x "$LOCAL_BIN" ]]; then
  log "ready: $LOCAL_BIN ($("$LOCAL_BIN" version --client --short 2>/dev/null || echo '?'))"
  exit 0
fi
owner="$(owner_of_system_kubectl)"
if [[ "$owner" == "kubernetes-client" ]]; then
  log "ready: /usr/bin/kubectl ($(/usr/bin/kubectl version --client --short 2>/dev/null || echo '?'))"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian's kubectl; run: sudo apt-get install -y kubernetes-client (or, if /usr/bin/kubectl belongs to another package, apt-get download kubernetes-client && dpkg-deb -x kubernetes-client_*.deb $LOCAL_DIR)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [[ -z "$owner" && ! -e /usr/bin/kubectl ]]; then
  log "installing kubernetes-client"
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
  log "ready: /usr/bin/kubectl"
  exit 0
fi
log "/usr/bin/kubectl belongs to '${owner:-no package}'; unpacking Debian's kubernetes-client under $LOCAL_DIR"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt's download user (_apt) writes there
(cd "$tmp" && apt-get download -qq kubernetes-client)
rm -rf "$LOCAL_DIR.partial"
mkdir -p "$LOCAL_DIR.partial"
dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$LOCAL_DIR.partial"
rm -rf "$LOCAL_DIR"
mv "$LOCAL_DIR.partial" "$LOCAL_DIR"
log "ready: $LOCAL_BIN ($("$LOCAL_BIN" version --client --short 2>/dev/null || echo '?'))"

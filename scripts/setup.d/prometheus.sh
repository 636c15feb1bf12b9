#!/usr/bin/env bash
# Prometheus and promtool for the metrics tests and for checking the shipped
# scrape config (grafana/prometheus/). Idempotent: installs only what is
# missing. Starts no Prometheus: the tests start their own on a free port with
# a temporary data dir, so nothing here listens or keeps running.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[setup:prometheus] %s\n' "$*"; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  log "prometheus and promtool present ($(prometheus --version 2>&1 | head -n1))"
else
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing prometheus/promtool; run: sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
  fi
  log "installing prometheus (provides promtool)"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d 101: the package's postinst must not start a system-wide
  # daemon on :9090 (it would collide with other users of this host).
  had_policy=0
  [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
  if ((had_policy == 0)); then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The shipped scrape config must stay valid.
promtool check config grafana/prometheus/prometheus.yml >/dev/null
log "ready; grafana/prometheus/prometheus.yml passes promtool check config"

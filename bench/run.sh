#!/usr/bin/env bash
# `make bench`: the same workloads direct, through OpenSSH `ssh -R` and through twisted-tunnel,
# side by side in one run.  This wrapper only installs the load tools (like
# /work/shared/bench/openssh-baseline.sh does) and hands over to bench/bench.py.
#
# usage: bash bench/run.sh [--seconds S] [--runs N] [--only direct|ssh|ours] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in sshd:openssh-server ssh:openssh-client nginx:nginx-light iperf3:iperf3 wrk:wrk hey:hey curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  echo "bench: installing ${need[*]}" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

BENCH_ENTRY="bash bench/run.sh" exec .venv/bin/python bench/bench.py "$@"

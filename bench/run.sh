#!/usr/bin/env bash
# `make bench`: the same workloads direct, through OpenSSH `ssh -R`, through twisted-tunnel and
# through its peers (frp, chisel, rathole, built by `make peers` with bench/loadgen), side by
# side in one run.  This wrapper only installs the load tools (like
# /work/shared/bench/openssh-baseline.sh does) and matplotlib for the plot, and hands over to
# bench/bench.py.
#
# usage: bash bench/run.sh [--seconds S] [--runs N] [--only TUNNEL ...] [--keep]
#        TUNNEL: direct ssh ours frp chisel rathole konnectivity (all by default)
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

# The plot (bench/results/latest.png) needs matplotlib: the `bench` extra of setup.cfg.
if ! .venv/bin/python -c 'import matplotlib' >/dev/null 2>&1; then
  echo "bench: installing matplotlib into .venv (the bench extra)" >&2
  .venv/bin/pip install -q matplotlib || echo "bench: matplotlib did not install; the run goes on without a plot" >&2
fi

BENCH_ENTRY="bash bench/run.sh" exec .venv/bin/python bench/bench.py "$@"

# Developer and CI entry points for twisted-tunnel.
#
# `make venv` builds .venv once and rebuilds it only when setup.cfg or
# pyproject.toml change (tracked by the stamp file .venv/.stamp).

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.stamp

PYTEST_ARGS ?=

.PHONY: venv test lint types demo bench bench-scale docs clean distclean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# the peers (frp, chisel, rathole; Konnectivity where the registry serves it) are built too, so
# that their smoke tests (tests/system/test_bench_peers.py) run rather than skip on a fresh machine;
# helm, which tests/system/test_chart.py lints and renders the chart with; and the container
# image, which tests/system/test_image.py runs
test: venv interop-build-test helm peers image
	@$(PY) -m pytest -q -p no:cacheprovider --timeout=300 $(PYTEST_ARGS) tests; \
	rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "make test: pytest exited with status $$rc" >&2; fi; \
	exit $$rc

# The fast tier (tests/conftest.py): in this process, no children, no namespaces, no iptables.
# PYTEST_ARGS='-m "not system and not slow"' leaves out its second-long tests too.
.PHONY: test-fast
test-fast: venv
	$(PY) -m pytest -q -p no:cacheprovider -m "not system" $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: venv
	$(VENV)/bin/mypy twisted_tunnel

demo: venv
	$(PY) -m twisted_tunnel.cli.demo

# The benchmark: direct, ssh -R, twisted-tunnel and its peers side by side (bench/bench.py; see
# docs/performance.md).  `make peers` first builds (or finds cached) the peers and bench/loadgen;
# one that does not build is reported and its rows say why.  BENCH_ARGS=... passes options, e.g.
# BENCH_ARGS="--runs 1 --seconds 4" (the table of docs/performance.md).
BENCH_ARGS ?=
bench: venv peers
	bash bench/run.sh $(BENCH_ARGS)

# Many streams at once (bench/streams.py): 2,000 streams of 5 MiB over 10 agents, every byte
# checked, and a stalled reader; a Markdown report on stdout.  Options: BENCH_STREAMS_ARGS=...
.PHONY: bench-streams
bench-streams: venv
	$(PY) bench/streams.py $(BENCH_STREAMS_ARGS)

# The path kube-apiserver takes: connections DNATed to the HTTP proxy listener, in network
# namespaces, against ssh -R (needs root).  A/B: BENCH_DNAT_ARGS='--tree base=/tmp/wt --tree new=.'
.PHONY: bench-dnat
bench-dnat: venv
	$(PY) bench/dnat.py $(BENCH_DNAT_ARGS)

# One server process, 1,000 then 5,000 then 10,000 simulated agents (see bench/results/scale.md).
bench-scale: venv
	$(PY) bench/agents.py --agents 1000 5000 10000 --idle-seconds 60 --opens 200 \
	    --report bench/results/tmp/scale-latest.md

# Reconnect storm (issue 6): 1,000 agents, the server killed and a fresh one started on the same
# ports, three times (see bench/results/storm.md).  Options: BENCH_STORM_ARGS=--signal term ...
.PHONY: bench-storm
bench-storm: venv
	$(PY) bench/agents.py --storm --agents 1000 1000 1000 --keep-going $(BENCH_STORM_ARGS) \
	    --report bench/results/tmp/storm-latest.md

# The fuzzing campaign (bench/fuzz.py): tests/package/test_fuzz.py's properties with random seeds
# and larger inputs, FUZZ_SECONDS in all (default 600); a Markdown table on stdout.
FUZZ_SECONDS ?= 600
.PHONY: fuzz
fuzz: venv
	$(PY) bench/fuzz.py --seconds $(FUZZ_SECONDS)

# The real Kubernetes components the interop tests (issue 13) run against, built pinned from the
# Go module proxy into ~/.cache/twisted-tunnel/interop (tests/interop/build.py): once per version.
.PHONY: interop-build interop-build-test interop
interop-build:
	$(PYTHON3) tests/interop/build.py

# What tests/system/test_interop.py runs (cold: some 20-25 minutes on two cores; warm: nothing to
# do).
INTEROP_TEST_COMPONENTS := etcd kube kubelet metrics-server
interop-build-test:
	$(PYTHON3) tests/interop/build.py $(INTEROP_TEST_COMPONENTS)

# helm v4.3.2 (issue 17), built pinned from helm.sh/helm/v4 on the Go module proxy by the same
# machinery (tests/interop/helm/), into ~/.cache/twisted-tunnel/interop: tests/system/test_chart.py
# lints and renders charts/twisted-tunnel with it. Once per version (cold: a few minutes on two
# cores; warm: nothing to do).
.PHONY: helm
helm:
	$(PYTHON3) tests/interop/build.py helm

# The benchmark's peers (issue 15): frp, chisel, rathole and Konnectivity, built pinned from
# their registries (the Go module proxy, crates.io), and bench/loadgen (ours, standard library
# only), into ~/.cache/twisted-tunnel/peers
# (bench/peers/build.py, the scheme of tests/interop/build.py): once per version, at the lowest
# priority.  PEERS=... builds only those.  A peer that does not build is reported (its error,
# then "not built: ...") and the others are built all the same: the target still succeeds, so
# that `make bench` runs the peers that did build (Konnectivity, OpenYurt: the module proxy
# refuses them, and their refused.txt keeps `make peers` from asking again).
# `make peers-smoke` drives each once on loopback (bench/peers/smoke.py; PEERS_SMOKE=... names
# variants: frp chisel rathole konnectivity konnectivity-mtls).
PEERS ?=
PEERS_SMOKE ?=
.PHONY: peers peers-smoke
peers:
	nice -n 19 $(PYTHON3) bench/peers/build.py --keep-going $(PEERS)

peers-smoke: venv peers
	$(PY) bench/peers/smoke.py $(PEERS_SMOKE)

# Memory per idle tunnel (bench/peers/idle.py): one server and K clients of each peer, each
# client its own process (rathole, frp, chisel: 1,000; twisted-tunnel's real agents: 50); about
# 5 minutes, at most ~2 GiB of clients at a time.  PEERS_IDLE="frp=100 ..." chooses.
PEERS_IDLE ?=
.PHONY: peers-idle
peers-idle: venv peers
	$(PY) bench/peers/idle.py $(PEERS_IDLE)

# The interop world, mode A (tests/interop/smoke.py), by hand: the real kube-apiserver, kubectl,
# kubelet API, metrics-server and Prometheus through the tunnel, in network namespaces (as root);
# `make test` runs it too (tests/system/test_interop.py).
interop: venv interop-build
	$(PY) tests/interop/smoke.py

# The container image (Containerfile, docs/image.md): localhost/twisted-tunnel:<version>, on a
# Debian bookworm base that image/build.py makes with debootstrap (no registry needed) and caches
# in ~/.cache/twisted-tunnel/image; podman's layer cache does the rest (warm: seconds).  Needs
# root, podman, runc and debootstrap (.ci/run installs them); without them it says so and builds
# nothing, except under CI=true, where it fails.
.PHONY: image
image:
	$(PYTHON3) image/build.py

# API docs in build/apidocs; the settings are tox.ini's [pydoctor] section, as for `tox -e docs`.
docs: venv
	$(VENV)/bin/pydoctor --config=tox.ini

clean:
	rm -rf build dist .eggs *.egg-info _trial_temp* .hypothesis .mypy_cache \
	    .ruff_cache .pytest_cache .tox
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name dropin.cache -type f -exec rm -f {} +

distclean: clean
	rm -rf $(VENV)

module twisted-tunnel.bench/peers/konnectivity

go 1.26.8

// apiserver-network-proxy's own go.mod replaces its client module with a local folder
// (./konnectivity-client), which a dependent module does not see: require both at one release.
// No go.sum yet: the Go module proxy refused sigs.k8s.io/apiserver-network-proxy@v0.37.1 (403,
// "This module version is not available") on 2026-12-07, so `go mod tidy` could not run.

tool (
	sigs.k8s.io/apiserver-network-proxy/cmd/agent
	sigs.k8s.io/apiserver-network-proxy/cmd/server
)

require (
	sigs.k8s.io/apiserver-network-proxy v0.37.1
	sigs.k8s.io/apiserver-network-proxy/konnectivity-client v0.37.1
)

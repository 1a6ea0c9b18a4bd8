//go:build tools

// Package tools keeps the programs this component builds in go.mod, so that
// `go mod tidy` does not drop their requirements.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

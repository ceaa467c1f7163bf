// Command snp-k8s is the Kubernetes control plane of the integration tests, one binary
// with three commands so that the packages they share compile and link once:
//
//	snp-k8s apiserver [flags]          kube-apiserver (k8s.io/kubernetes) over an embedded etcd
//	snp-k8s controller-manager [flags] kube-controller-manager, upstream flags unchanged
//	snp-k8s kubectl [args]             kubectl, upstream (also when invoked as "kubectl")
//
// Everything here is the upstream code; this module only wires it up: certificates, the
// etcd it embeds, the listener, and a readiness line on stdout.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	if filepath.Base(os.Args[0]) == "kubectl" {
		os.Exit(kubectl(os.Args))
	}
	if len(os.Args) < 2 {
		usage()
	}
	// Each command sees argv as if it were its own binary: cobra, the kubectl plugin
	// handler and the usage texts read os.Args.
	args := append([]string{os.Args[1]}, os.Args[2:]...)
	switch os.Args[1] {
	case "apiserver":
		os.Args = args
		os.Exit(apiserver(args[1:]))
	case "controller-manager":
		os.Args = args
		os.Exit(controllerManager())
	case "kubectl":
		os.Exit(kubectl(args))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: snp-k8s apiserver [flags] | controller-manager [flags] | kubectl [args]")
	os.Exit(2)
}

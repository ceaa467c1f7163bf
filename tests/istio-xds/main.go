// Command snp-istio-xds runs istiod's own configuration generation (Istio release-1.31, as a Go
// module) on this repository's manifests, for the end-to-end tests in tests/e2e.
//
//	snp-istio-xds report --out DIR [--envoyfilter F] [--proxy-version V] [--wasm F]
//	    istiod generates the configuration of one Dubbo app's sidecar; every patch of the
//	    EnvoyFilter is reported by its effect on what istiod serves (JSON on stdout). DIR gets
//	    the served resources and one static Envoy bootstrap holding them, for envoy --mode validate.
//	snp-istio-xds analyze FILE...
//	    what `istioctl analyze -f FILE` reports for EnvoyFilters (JSON on stdout).
//	snp-istio-xds serve --dir DIR --shim-port P --wasm F [--envoyfilter F] [--proxy-version V]
//	    istiod serves a live Envoy over ADS, through a stand-in for istio-agent (its xDS proxy and
//	    SDS server on the agent's Unix sockets). Writes DIR/envoy.json (the sidecar bootstrap from
//	    Istio's own template) and prints one line "READY {json}"; runs until SIGTERM.
//
// istiod is istio.io/istio/pilot/test/xds.NewFakeDiscoveryServer, what Istio's own xDS tests
// run: the real DiscoveryServer, PushContext, config generator, EnvoyFilter patching, ECDS
// generator and Kubernetes service registry, over client-go's fake clientset instead of an API
// server. The sidecar's node metadata and bootstrap come from istio-agent's pkg/bootstrap and
// the template Istio ships (tools/packaging/common/envoy_bootstrap.json).
package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"

	"istio.io/istio/pkg/log"
)

// istiodEnv switches off, with istiod's own feature flags, what only Istio's Envoy build
// (istio/proxy) can run: the HTTP filters istio.alpn and istio.metadata_exchange (and the
// network filter of the same name). istio.stats comes from the Telemetry defaults of the
// mesh configuration instead (meshConfig below). ISTIO_DELTA_XDS stays at its default (on):
// the live Envoy gets delta xDS as a 1.31 sidecar does.
//
// istiod reads these at start-up (package initialisation), so the command re-executes itself
// with them set rather than relying on its caller.
var istiodEnv = map[string]string{
	"PILOT_ENABLE_ALPN_FILTER":       "false",
	"PILOT_ENABLE_METADATA_EXCHANGE": "false",
}

func main() {
	if reexecWithIstiodEnv() {
		return
	}
	if len(os.Args) < 2 {
		usage()
	}
	// istiod logs to stdout by default; stdout is this command's answer.
	lo := log.DefaultOptions()
	lo.OutputPaths = []string{"stderr"}
	lo.ErrorOutputPaths = []string{"stderr"}
	if err := log.Configure(lo); err != nil {
		fmt.Fprintf(os.Stderr, "snp-istio-xds: logging: %v\n", err)
		os.Exit(1)
	}
	var err error
	switch os.Args[1] {
	case "report":
		err = runReport(os.Args[2:])
	case "serve":
		err = runServe(os.Args[2:])
	case "analyze":
		err = runAnalyze(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "snp-istio-xds %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: snp-istio-xds report --out DIR [flags] | serve --dir DIR --shim-port P --wasm F [flags]")
	os.Exit(2)
}

func reexecWithIstiodEnv() bool {
	missing := false
	env := os.Environ()
	for k, v := range istiodEnv {
		if os.Getenv(k) != v {
			missing = true
			env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
			env = append(env, k+"="+v)
		}
	}
	if !missing {
		return false
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "snp-istio-xds: locating itself: %v\n", err)
		os.Exit(1)
	}
	err = syscall.Exec(self, os.Args, env)
	fmt.Fprintf(os.Stderr, "snp-istio-xds: re-executing with istiod's flags: %v\n", err)
	os.Exit(1)
	return true
}

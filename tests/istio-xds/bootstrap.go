package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"istio.io/istio/pkg/wasm"
)

// moduleFile stands in for the OCI registry behind istio-agent's Wasm cache: every module URL
// is the built .wasm file. The conversion around it (remote code -> local file in the ECDS
// resource, before Envoy sees it) is istio-agent's own, wasm.MaybeConvertWasmExtensionConfig.
type moduleFile struct{ path string }

func (m moduleFile) Get(url string, opts wasm.GetOptions) (string, error) {
	if m.path == "" {
		return "", fmt.Errorf("no --wasm file for %s", url)
	}
	abs, err := filepath.Abs(m.path)
	if err != nil {
		return "", err
	}
	if opts.Checksum != "" {
		b, err := os.ReadFile(abs)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != opts.Checksum {
			return "", fmt.Errorf("%s: sha256 is not %s", abs, opts.Checksum)
		}
	}
	return abs, nil
}

func (moduleFile) Cleanup() {}

// agentConvertECDS applies istio-agent's rewrite to copies of ECDS resources.
func agentConvertECDS(resources []*anypb.Any, wasmFile string) ([]*anypb.Any, error) {
	out := make([]*anypb.Any, len(resources))
	for i, r := range resources {
		out[i] = proto.Clone(r).(*anypb.Any)
	}
	if err := wasm.MaybeConvertWasmExtensionConfig(out, moduleFile{wasmFile}); err != nil {
		return nil, err
	}
	return out, nil
}

// staticBootstrap puts everything served into the rendered sidecar bootstrap as static
// configuration, for `envoy --mode validate` (which does not connect to xDS):
//   - LDS listeners and CDS clusters become static_resources;
//   - an HCM's rds becomes route_config, the RDS route configuration of that name;
//   - an HTTP filter's config_discovery becomes typed_config, the ECDS resource of that name
//     (after istio-agent's Wasm rewrite, so that Envoy loads and checks the module);
//   - an EDS cluster becomes STATIC with the EDS ClusterLoadAssignment as load_assignment;
//   - dynamic_resources goes (nothing is left to fetch).
//
// Every other byte is what istiod and the template produced.
func staticBootstrap(got *served, sc *sidecar, wasmFile string) (map[string]any, error) {
	var boot map[string]any
	if err := json.Unmarshal(sc.bootstrap, &boot); err != nil {
		return nil, err
	}
	rds := map[string]any{}
	for n, a := range got.routes {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		rds[n] = j
	}
	names := make([]string, 0, len(got.ecds))
	raw := make([]*anypb.Any, 0, len(got.ecds))
	for n, a := range got.ecds {
		names = append(names, n)
		raw = append(raw, a)
	}
	converted, err := agentConvertECDS(raw, wasmFile)
	if err != nil {
		return nil, err
	}
	ecds := map[string]any{}
	for i, a := range converted {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		ecds[names[i]] = j["typed_config"]
	}
	var listeners []any
	for _, n := range got.listenerNames {
		l, err := toJSON(got.listeners[n])
		if err != nil {
			return nil, err
		}
		if err := inlineHCMs(l, rds, ecds); err != nil {
			return nil, fmt.Errorf("listener %s: %w", n, err)
		}
		listeners = append(listeners, l)
	}
	var clusters []any
	for _, n := range got.clusterNames {
		c, err := toJSON(got.clusters[n])
		if err != nil {
			return nil, err
		}
		if c["type"] == "EDS" {
			a, ok := got.endpoints[n]
			if !ok {
				return nil, fmt.Errorf("cluster %s: no EDS resource", n)
			}
			la, err := anyJSON(a)
			if err != nil {
				return nil, err
			}
			c["type"] = "STATIC"
			delete(c, "eds_cluster_config")
			c["load_assignment"] = la
		}
		clusters = append(clusters, c)
	}
	sr, _ := boot["static_resources"].(map[string]any)
	if sr == nil {
		sr = map[string]any{}
		boot["static_resources"] = sr
	}
	sr["listeners"] = append(list(sr["listeners"]), listeners...)
	sr["clusters"] = append(list(sr["clusters"]), clusters...)
	delete(boot, "dynamic_resources")
	return boot, nil
}

func inlineHCMs(l map[string]any, rds, ecds map[string]any) error {
	chains := list(l["filter_chains"])
	if d, ok := l["default_filter_chain"]; ok {
		chains = append(chains, d)
	}
	for _, fc := range chains {
		for _, nf := range list(fc.(map[string]any)["filters"]) {
			tc, _ := nf.(map[string]any)["typed_config"].(map[string]any)
			if !strings.HasSuffix(str(tc["@type"]), ".HttpConnectionManager") {
				continue
			}
			if r, ok := tc["rds"].(map[string]any); ok {
				name := str(r["route_config_name"])
				rc, ok := rds[name]
				if !ok {
					return fmt.Errorf("no route configuration %q served", name)
				}
				delete(tc, "rds")
				tc["route_config"] = rc
			}
			for _, f := range list(tc["http_filters"]) {
				fm := f.(map[string]any)
				if _, ok := fm["config_discovery"]; !ok {
					continue
				}
				name := str(fm["name"])
				cfg, ok := ecds[name]
				if !ok {
					return fmt.Errorf("no extension configuration %q served", name)
				}
				delete(fm, "config_discovery")
				fm["typed_config"] = cfg
			}
		}
	}
	return nil
}

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// patchEffect is one configPatches entry, judged by what istiod served.
type patchEffect struct {
	Index   int    `json:"index"`
	ApplyTo string `json:"apply_to"`
	Name    string `json:"name"`
	// "applied": found where the operation puts it, every field of the value present and
	// equal; "altered": found, but some field is missing or different (istiod drops unknown
	// fields silently); "not_applied": not found (the match matched nothing, or the proxy
	// version did not match).
	Status string `json:"status"`
	// Where it was found ("listener 0.0.0.0_15051 chain 0", "route configuration 15051 vhost x").
	Found []string `json:"found,omitempty"`
	// Why it is not "applied".
	Problems []string `json:"problems,omitempty"`
}

type report struct {
	ProxyVersion string        `json:"proxy_version"`
	EnvoyFilter  string        `json:"envoyfilter"`
	Patches      []patchEffect `json:"patches"`
	AllApplied   bool          `json:"all_applied"`
	// What istiod served, in brief, for the tests' own checks.
	Listeners   []string                       `json:"listeners"`
	Clusters    []string                       `json:"clusters"`
	HTTPFilters map[string][]string            `json:"http_filters"` // listener -> filter names, first HCM
	Routes      map[string]map[string][]string `json:"routes"`       // route config -> vhost -> route names
	ECDS        []string                       `json:"ecds"`
	Files       map[string]string              `json:"files"`
}

func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	var c common
	c.register(fs)
	out := fs.String("out", "", "directory for the served resources and the validate bootstrap")
	_ = fs.Parse(args)
	if *out == "" {
		return fmt.Errorf("--out is required")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	f := &failer{}
	defer f.Cleanup(nil)
	s, err := startIstiod(f, &c, world{shimIP: "10.244.1.9", shimPort: 15051})
	if err != nil {
		return err
	}
	sc, err := newSidecar(&c, agentPorts{})
	if err != nil {
		return err
	}
	got, err := fetchAll(s, sc.node)
	if err != nil {
		return err
	}
	rep, err := judge(&c, got)
	if err != nil {
		return err
	}
	rep.Files, err = writeServed(*out, got, sc, c.wasm)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// judge reports each patch of the EnvoyFilter by its effect in what was served.
func judge(c *common, got *served) (*report, error) {
	raw, err := os.ReadFile(c.envoyFilterPath())
	if err != nil {
		return nil, err
	}
	var ef struct {
		Spec struct {
			ConfigPatches []struct {
				ApplyTo string         `json:"applyTo"`
				Match   map[string]any `json:"match"`
				Patch   struct {
					Operation string         `json:"operation"`
					Value     map[string]any `json:"value"`
				} `json:"patch"`
			} `json:"configPatches"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &ef); err != nil {
		return nil, fmt.Errorf("%s: %w", c.envoyFilterPath(), err)
	}
	rep := &report{
		ProxyVersion: c.proxyVersion, EnvoyFilter: c.envoyFilterPath(), AllApplied: len(ef.Spec.ConfigPatches) > 0,
		Listeners: got.listenerNames, Clusters: got.clusterNames,
		HTTPFilters: map[string][]string{}, Routes: map[string]map[string][]string{}, ECDS: []string{},
	}
	listeners := map[string]map[string]any{}
	for name, l := range got.listeners {
		j, err := toJSON(l)
		if err != nil {
			return nil, err
		}
		listeners[name] = j
		if hs := hcms(l); len(hs) > 0 {
			for _, f := range hs[0].HttpFilters {
				rep.HTTPFilters[name] = append(rep.HTTPFilters[name], f.Name)
			}
		}
	}
	routes := map[string]map[string]any{}
	for name, a := range got.routes {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		routes[name] = j
		rep.Routes[name] = map[string][]string{}
		for _, vh := range list(j["virtual_hosts"]) {
			for _, r := range list(vh.(map[string]any)["routes"]) {
				vhn := str(vh.(map[string]any)["name"])
				rep.Routes[name][vhn] = append(rep.Routes[name][vhn], str(r.(map[string]any)["name"]))
			}
		}
	}
	for name := range got.ecds {
		rep.ECDS = append(rep.ECDS, name)
	}
	sort.Strings(rep.ECDS)

	for i, p := range ef.Spec.ConfigPatches {
		e := patchEffect{Index: i + 1, ApplyTo: p.ApplyTo, Name: str(p.Patch.Value["name"])}
		switch p.ApplyTo {
		case "EXTENSION_CONFIG":
			a, ok := got.ecds[e.Name]
			if ok {
				j, err := anyJSON(a)
				if err != nil {
					return nil, err
				}
				e.Found = append(e.Found, "ECDS "+e.Name)
				e.Problems = diff("", p.Patch.Value, j)
			}
		case "LISTENER":
			if j, ok := listeners[e.Name]; ok {
				e.Found = append(e.Found, "listener "+e.Name)
				e.Problems = diff("", p.Patch.Value, j)
			}
		case "CLUSTER":
			if cl, ok := got.clusters[e.Name]; ok {
				j, err := toJSON(cl)
				if err != nil {
					return nil, err
				}
				e.Found = append(e.Found, "cluster "+e.Name)
				e.Problems = diff("", p.Patch.Value, j)
			}
		case "HTTP_FILTER":
			judgeHTTPFilter(&e, p.Match, p.Patch.Operation, p.Patch.Value, listeners)
		case "HTTP_ROUTE":
			judgeHTTPRoute(&e, p.Match, p.Patch.Operation, p.Patch.Value, routes)
		default:
			e.Problems = append(e.Problems, "applyTo "+p.ApplyTo+" is not judged by this harness")
		}
		switch {
		case len(e.Found) == 0:
			e.Status = "not_applied"
		case len(e.Problems) > 0:
			e.Status = "altered"
		default:
			e.Status = "applied"
		}
		if e.Status != "applied" {
			rep.AllApplied = false
		}
		rep.Patches = append(rep.Patches, e)
	}
	return rep, nil
}

// judgeHTTPFilter: in every HTTP connection manager of the listeners on match.listener.portNumber
// that has the sub-filter, the patch's filter must sit where the operation puts it.
func judgeHTTPFilter(e *patchEffect, match map[string]any, op string, value map[string]any, listeners map[string]map[string]any) {
	lm, _ := match["listener"].(map[string]any)
	port := num(lm["portNumber"])
	fcm, _ := lm["filterChain"].(map[string]any)
	fm, _ := fcm["filter"].(map[string]any)
	sm, _ := fm["subFilter"].(map[string]any)
	sub := str(sm["name"])
	names := make([]string, 0, len(listeners))
	for n := range listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, ln := range names {
		l := listeners[ln]
		addr, _ := l["address"].(map[string]any)
		sa, _ := addr["socket_address"].(map[string]any)
		if port != 0 && num(sa["port_value"]) != port {
			continue
		}
		chains := list(l["filter_chains"])
		if d, ok := l["default_filter_chain"]; ok {
			chains = append(chains, d)
		}
		for ci, fc := range chains {
			for _, nf := range list(fc.(map[string]any)["filters"]) {
				tc, _ := nf.(map[string]any)["typed_config"].(map[string]any)
				if !strings.HasSuffix(str(tc["@type"]), ".HttpConnectionManager") {
					continue
				}
				filters := list(tc["http_filters"])
				subAt, at := -1, -1
				for i, f := range filters {
					switch str(f.(map[string]any)["name"]) {
					case sub:
						subAt = i
					case e.Name:
						at = i
					}
				}
				if sub != "" && subAt < 0 {
					continue // istiod would not patch a chain without the sub-filter
				}
				where := fmt.Sprintf("listener %s chain %d", ln, ci)
				if at < 0 {
					e.Problems = append(e.Problems, where+": no filter "+e.Name)
					continue
				}
				e.Found = append(e.Found, where)
				switch op {
				case "INSERT_BEFORE":
					if at != subAt-1 {
						e.Problems = append(e.Problems, fmt.Sprintf("%s: at %d, not just before %s at %d", where, at, sub, subAt))
					}
				case "INSERT_AFTER":
					if at != subAt+1 {
						e.Problems = append(e.Problems, fmt.Sprintf("%s: at %d, not just after %s at %d", where, at, sub, subAt))
					}
				case "INSERT_FIRST":
					if at != 0 {
						e.Problems = append(e.Problems, fmt.Sprintf("%s: at %d, not first", where, at))
					}
				}
				e.Problems = append(e.Problems, diff(where+" ", value, filters[at].(map[string]any))...)
			}
		}
	}
}

// judgeHTTPRoute: INSERT_FIRST puts the route at the head of every virtual host of the route
// configuration, or of the one that match.routeConfiguration.vhost.name names (after other
// patches' routes, before Istio's own).
func judgeHTTPRoute(e *patchEffect, match map[string]any, op string, value map[string]any, routes map[string]map[string]any) {
	rm, _ := match["routeConfiguration"].(map[string]any)
	name := strconv.Itoa(num(rm["portNumber"]))
	if n := str(rm["name"]); n != "" {
		name = n
	}
	vm, _ := rm["vhost"].(map[string]any)
	vhost := str(vm["name"])
	rc, ok := routes[name]
	if !ok {
		return
	}
	for _, vh := range list(rc["virtual_hosts"]) {
		v := vh.(map[string]any)
		if vhost != "" && str(v["name"]) != vhost {
			continue
		}
		where := fmt.Sprintf("route configuration %s vhost %s", name, str(v["name"]))
		rs := list(v["routes"])
		at := -1
		for i, r := range rs {
			if str(r.(map[string]any)["name"]) == e.Name {
				at = i
			}
		}
		if at < 0 {
			e.Problems = append(e.Problems, where+": no route "+e.Name)
			continue
		}
		e.Found = append(e.Found, where)
		if op == "INSERT_FIRST" {
			for _, r := range rs[:at] {
				if !strings.HasPrefix(str(r.(map[string]any)["name"]), "snp-") {
					e.Problems = append(e.Problems, fmt.Sprintf("%s: at %d, after Istio's route %s", where, at, str(r.(map[string]any)["name"])))
				}
			}
		}
		e.Problems = append(e.Problems, diff(where+" ", value, rs[at].(map[string]any))...)
	}
}

// diff lists where `got` lacks or differs from a field of `want` (recursively: every field of
// the patch value must be present and equal; `got` may have more). proto3 JSON leaves out
// fields at their zero value, so a zero in `want` matches an absent field.
func diff(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: want an object, got %v", strings.TrimSpace(path), short(got))}
		}
		var out []string
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p := path + "." + k
			gv, ok := g[k]
			if !ok {
				if isZero(w[k]) {
					continue
				}
				out = append(out, strings.TrimSpace(p)+": missing")
				continue
			}
			out = append(out, diff(p, w[k], gv)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: want %d items, got %v", strings.TrimSpace(path), len(w), short(got))}
		}
		var out []string
		for i := range w {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	default:
		if scalarEqual(want, got) {
			return nil
		}
		return []string{fmt.Sprintf("%s: want %v, got %v", strings.TrimSpace(path), short(want), short(got))}
	}
}

func scalarEqual(a, b any) bool {
	if reflect.DeepEqual(a, b) {
		return true
	}
	// YAML numbers vs proto JSON's 64-bit integers (strings) and the like.
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func isZero(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	}
	return false
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 160 {
		return string(b[:160]) + "..."
	}
	return string(b)
}

func list(v any) []any { l, _ := v.([]any); return l }
func str(v any) string { s, _ := v.(string); return s }
func num(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case string:
		n, _ := strconv.Atoi(x)
		return n
	}
	return 0
}

// writeServed writes each served resource type (JSON), the rendered bootstrap, and one static
// bootstrap holding all of it for envoy --mode validate.
func writeServed(dir string, got *served, sc *sidecar, wasmFile string) (map[string]string, error) {
	files := map[string]string{}
	put := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		p := filepath.Join(dir, name)
		files[strings.TrimSuffix(name, ".json")] = p
		return os.WriteFile(p, b, 0o644)
	}
	lds := []any{}
	for _, n := range got.listenerNames {
		j, err := toJSON(got.listeners[n])
		if err != nil {
			return nil, err
		}
		lds = append(lds, j)
	}
	cds := []any{}
	for _, n := range got.clusterNames {
		j, err := toJSON(got.clusters[n])
		if err != nil {
			return nil, err
		}
		cds = append(cds, j)
	}
	rds, eds, ecds := map[string]any{}, map[string]any{}, map[string]any{}
	for n, a := range got.routes {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		rds[n] = j
	}
	for n, a := range got.endpoints {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		eds[n] = j
	}
	for n, a := range got.ecds {
		j, err := anyJSON(a)
		if err != nil {
			return nil, err
		}
		ecds[n] = j
	}
	for name, v := range map[string]any{"lds.json": lds, "cds.json": cds, "rds.json": rds, "eds.json": eds, "ecds.json": ecds} {
		if err := put(name, v); err != nil {
			return nil, err
		}
	}
	p := filepath.Join(dir, "bootstrap-rendered.json")
	files["bootstrap-rendered"] = p
	if err := os.WriteFile(p, sc.bootstrap, 0o644); err != nil {
		return nil, err
	}
	static, err := staticBootstrap(got, sc, wasmFile)
	if err != nil {
		return nil, err
	}
	return files, put("bootstrap-static.json", static)
}

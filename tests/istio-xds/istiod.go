package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/bootstrap"
	"istio.io/istio/pkg/bootstrap/platform"
	"istio.io/istio/pkg/config/mesh"
)

// The app whose sidecar is generated: a Dubbo provider in namespace "shop" on node "node-1",
// the node of the shim pod too (the Service has internalTrafficPolicy: Local).
const (
	appNamespace = "shop"
	appName      = "demo-provider"
	appPod       = "demo-provider-7d9f8b6c5-x2x4q"
	appIP        = "10.244.1.7"
	nodeName     = "node-1"
	// What the API server would have allocated to deploy/service.yaml (it has no clusterIP).
	shimClusterIP = "10.96.51.51"
)

// common holds the flags both commands take.
type common struct {
	root         string
	envoyFilter  string
	proxyVersion string
	template     string
	wasm         string
}

func (c *common) register(fs *flag.FlagSet) {
	exe, _ := os.Executable()
	fs.StringVar(&c.root, "root", ".", "the repository (deploy/ is read from it)")
	fs.StringVar(&c.envoyFilter, "envoyfilter", "", "the EnvoyFilter manifest (default ROOT/deploy/istio/envoyfilter.yaml)")
	fs.StringVar(&c.proxyVersion, "proxy-version", "1.31.0", "the sidecar's Istio version (node metadata ISTIO_VERSION)")
	fs.StringVar(&c.template, "bootstrap-template", filepath.Join(filepath.Dir(exe), "envoy_bootstrap.json"),
		"Istio's sidecar bootstrap template (tools/packaging/common/envoy_bootstrap.json; scripts/istio-xds.sh copies it next to the binary)")
	fs.StringVar(&c.wasm, "wasm", "", "the built filter (.wasm): what istio-agent would have downloaded for the oci:// URL")
}

func (c *common) envoyFilterPath() string {
	if c.envoyFilter != "" {
		return c.envoyFilter
	}
	return filepath.Join(c.root, "deploy", "istio", "envoyfilter.yaml")
}

// failer lets NewFakeDiscoveryServer, written for `go test`, run in a command.
type failer struct{ cleanups []func() }

func (f *failer) Fail()                          { f.FailNow() }
func (f *failer) FailNow()                       { f.Fatal("failed") }
func (f *failer) Fatal(args ...any)              { f.Cleanup(nil); fmt.Fprintln(os.Stderr, args...); os.Exit(1) }
func (f *failer) Fatalf(format string, a ...any) { f.Fatal(fmt.Sprintf(format, a...)) }
func (f *failer) Log(args ...any)                { fmt.Fprintln(os.Stderr, args...) }
func (f *failer) Logf(format string, a ...any)   { fmt.Fprintf(os.Stderr, format+"\n", a...) }
func (f *failer) Helper()                        {}
func (f *failer) Skip(args ...any)               { f.Fatal(append([]any{"skip is not allowed:"}, args...)...) }
func (f *failer) TempDir() string {
	d, err := os.MkdirTemp("", "snp-istio-xds-")
	if err != nil {
		f.Fatal(err)
	}
	f.cleanups = append(f.cleanups, func() { _ = os.RemoveAll(d) })
	return d
}

// Cleanup with nil runs the registered cleanups (last first).
func (f *failer) Cleanup(fn func()) {
	if fn != nil {
		f.cleanups = append(f.cleanups, fn)
		return
	}
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	f.cleanups = nil
}

// world is what istiod is given.
type world struct {
	shimIP   string
	shimPort int
	// meshConfig ports (0: Istio's defaults). A live Envoy on a shared machine needs free ones.
	outboundPort, inboundPort uint32
}

// meshConfig is istiod's built-in default mesh configuration with two explicit choices:
//   - defaultProviders.metrics is empty, so istiod generates no istio.stats filter (Istio's
//     Helm chart sets it to [prometheus]; that filter exists only in Istio's Envoy build);
//   - the sidecar's capture ports, when a live Envoy must bind free ones.
func (w world) meshConfig() *meshconfig.MeshConfig {
	m := mesh.DefaultMeshConfig()
	if m.DefaultProviders == nil {
		m.DefaultProviders = &meshconfig.MeshConfig_DefaultProviders{}
	}
	m.DefaultProviders.Metrics = nil
	if w.outboundPort != 0 {
		m.ProxyListenPort = int32(w.outboundPort)
		m.ProxyInboundListenPort = int32(w.inboundPort)
	}
	return m
}

// kubeObjects: deploy/namespace.yaml and deploy/service.yaml as they are (plus the ClusterIP
// the API server would allocate), the shim pod and its EndpointSlice (the DaemonSet's pod on
// node-1), that node, and the app's namespace and pod.
func (w world) kubeObjects(root string) (string, error) {
	ns, err := os.ReadFile(filepath.Join(root, "deploy", "namespace.yaml"))
	if err != nil {
		return "", err
	}
	svcYAML, err := os.ReadFile(filepath.Join(root, "deploy", "service.yaml"))
	if err != nil {
		return "", err
	}
	var svc map[string]any
	if err := yaml.Unmarshal(svcYAML, &svc); err != nil {
		return "", fmt.Errorf("deploy/service.yaml: %w", err)
	}
	spec, _ := svc["spec"].(map[string]any)
	if spec == nil {
		return "", fmt.Errorf("deploy/service.yaml has no spec")
	}
	if _, ok := spec["clusterIP"]; !ok {
		spec["clusterIP"] = shimClusterIP
	}
	svcOut, err := yaml.Marshal(svc)
	if err != nil {
		return "", err
	}
	docs := []string{fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %s
  labels: {topology.kubernetes.io/region: region-1, topology.kubernetes.io/zone: zone-a}
`, nodeName), string(ns), string(svcOut), fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: snp-shim-x7k2p
  namespace: snp-system
  labels:
    app.kubernetes.io/name: snp-shim
    app.kubernetes.io/part-of: snp
spec:
  nodeName: %[3]s
  serviceAccountName: snp-shim
  containers:
  - name: shim
    image: snp-shim
    ports:
    - {name: grpc, containerPort: %[2]d}
    - {name: http-metrics, containerPort: 15052}
status:
  phase: Running
  podIP: %[1]s
  podIPs: [{ip: %[1]s}]
  conditions: [{type: Ready, status: "True"}]
`, w.shimIP, w.shimPort, nodeName), fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: snp-shim-abcde
  namespace: snp-system
  labels:
    kubernetes.io/service-name: snp-shim
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
endpoints:
- addresses: [%[1]s]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: %[3]s
  targetRef: {kind: Pod, name: snp-shim-x7k2p, namespace: snp-system}
ports:
- {name: grpc, port: %[2]d, protocol: TCP, appProtocol: grpc}
- {name: http-metrics, port: 15052, protocol: TCP, appProtocol: http}
`, w.shimIP, w.shimPort, nodeName), fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels: {istio-injection: enabled}
`, appNamespace), fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: {app: %[3]s, security.istio.io/tlsMode: istio, service.istio.io/canonical-name: %[3]s}
spec:
  nodeName: %[5]s
  serviceAccountName: %[3]s
  containers:
  - {name: app, image: %[3]s}
  - {name: istio-proxy, image: proxyv2}
status:
  phase: Running
  podIP: %[4]s
  podIPs: [{ip: %[4]s}]
  conditions: [{type: Ready, status: "True"}]
`, appNamespace, appPod, appName, appIP, nodeName)}
	return strings.Join(docs, "\n---\n"), nil
}

// startIstiod runs istiod's discovery server on the world and the EnvoyFilter file.
func startIstiod(f *failer, c *common, w world) (*xds.FakeDiscoveryServer, error) {
	objs, err := w.kubeObjects(c.root)
	if err != nil {
		return nil, err
	}
	ef, err := os.ReadFile(c.envoyFilterPath())
	if err != nil {
		return nil, err
	}
	s := xds.NewFakeDiscoveryServer(f, xds.FakeOptions{
		KubernetesObjectString: objs,
		ConfigString:           string(ef),
		MeshConfig:             w.meshConfig(),
	})
	return s, nil
}

// sidecar is the proxy as istio-agent describes it: node metadata and bootstrap.
type sidecar struct {
	node      *core.Node
	bootstrap []byte // JSON, from Istio's template
}

// agentPorts are the ports the bootstrap template binds (admin, status, Prometheus) and the
// agent's Unix socket directory (ConfigPath: the bootstrap's xds-grpc cluster dials ConfigPath/XDS).
type agentPorts struct {
	admin, status, prometheus int
	configPath                string
}

// newSidecar renders node metadata with istio-agent's GetNodeMetaData, from the environment
// the sidecar injector gives the istio-proxy container, and the bootstrap from the template.
func newSidecar(c *common, p agentPorts) (*sidecar, error) {
	pc := mesh.DefaultProxyConfig()
	if p.admin != 0 {
		pc.ProxyAdminPort = int32(p.admin)
		pc.StatusPort = int32(p.status)
	}
	if p.configPath != "" {
		pc.ConfigPath = p.configPath
	}
	// What docs/istio.md tells users to add (proxy.istio.io/config): Istio's bootstrap keeps
	// few stats by default, and the tests read these.
	pc.ProxyStatsMatcher = &meshconfig.ProxyConfig_ProxyStatsMatcher{InclusionPrefixes: []string{
		"cluster.snp_", "cluster.outbound|15051|", "extension_config_discovery.",
	}}
	prom := p.prometheus
	if prom == 0 {
		prom = 15090
	}
	labels, _ := json.Marshal(map[string]string{
		"app": appName, "security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": appName,
	})
	envs := []string{
		"POD_NAME=" + appPod,
		"POD_NAMESPACE=" + appNamespace,
		"INSTANCE_IP=" + appIP,
		"SERVICE_ACCOUNT=" + appName,
		"ISTIO_META_ISTIO_VERSION=" + c.proxyVersion,
		"ISTIO_META_CLUSTER_ID=Kubernetes",
		"ISTIO_META_NODE_NAME=" + nodeName,
		"ISTIO_META_INTERCEPTION_MODE=REDIRECT",
		"ISTIO_META_WORKLOAD_NAME=" + appName,
		"ISTIO_META_OWNER=kubernetes://apis/apps/v1/namespaces/" + appNamespace + "/deployments/" + appName,
		"ISTIO_META_MESH_ID=cluster.local",
		"ISTIO_META_APP_CONTAINERS=app",
		"ISTIO_METAJSON_LABELS=" + string(labels),
	}
	node, err := bootstrap.GetNodeMetaData(bootstrap.MetadataOptions{
		Envs:                envs,
		Platform:            &platform.Unknown{},
		InstanceIPs:         []string{appIP},
		ID:                  fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", appIP, appPod, appNamespace, appNamespace),
		ProxyConfig:         pc,
		EnvoyStatusPort:     int(pc.StatusPort),
		EnvoyPrometheusPort: prom,
		// The SDS socket istio-agent serves (the template's sds-grpc cluster dials it).
		WorkloadIdentitySocketFile: "socket",
	})
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	var buf bytes.Buffer
	if err := bootstrap.New(bootstrap.Config{Node: node}).WriteTo(c.template, &buf); err != nil {
		return nil, fmt.Errorf("bootstrap from %s: %w", c.template, err)
	}
	// The node Envoy will announce is the one in the rendered bootstrap.
	var doc struct {
		Node json.RawMessage `json:"node"`
	}
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		return nil, fmt.Errorf("rendered bootstrap: %w", err)
	}
	n := &core.Node{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(doc.Node, n); err != nil {
		return nil, fmt.Errorf("bootstrap node: %w", err)
	}
	return &sidecar{node: n, bootstrap: buf.Bytes()}, nil
}

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secret "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/wasm"
)

// The outbound listener istiod generates for the shim's Service port.
const shimListener = "0.0.0.0_15051"

// localizer makes the few changes that stand in for what a pod has and a test machine has not.
// Each is listed in Substitutions (printed with READY) and in docs/istio.md:
//   - ECDS: istio-agent's Wasm rewrite (remote module -> local file), with the built .wasm as
//     the registry's answer;
//   - LDS: listener 0.0.0.0_15051 binds 127.0.0.1:<free port> instead of receiving the app's
//     connections from iptables through the virtual outbound listener;
//   - CDS: cluster snp_shim dials 127.0.0.1:<shim port> instead of resolving the Service's DNS
//     name to its ClusterIP, which kube-proxy would send to the shim on this node.
type localizer struct {
	wasm         string
	listenerPort int
	shimPort     int
}

func (z localizer) substitutions() []string {
	return []string{
		"ECDS: istio-agent's Wasm conversion (pkg/wasm), module URL -> " + z.wasm,
		fmt.Sprintf("LDS: listener %s binds 127.0.0.1:%d (iptables would redirect to it)", shimListener, z.listenerPort),
		fmt.Sprintf("CDS: cluster snp_shim dials 127.0.0.1:%d (cluster DNS and kube-proxy)", z.shimPort),
	}
}

// rewrite changes resources of one response in place.
func (z localizer) rewrite(typeURL string, res []*anypb.Any) error {
	switch typeURL {
	case v3.ExtensionConfigurationType:
		if err := wasm.MaybeConvertWasmExtensionConfig(res, moduleFile{z.wasm}); err != nil {
			return err
		}
	case v3.ListenerType:
		for i, a := range res {
			l := &listener.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				return err
			}
			if l.Name != shimListener {
				continue
			}
			l.Address = &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(z.listenerPort)},
			}}}
			l.BindToPort = wrapperspb.Bool(true)
			var err error
			if res[i], err = anypb.New(l); err != nil {
				return err
			}
		}
	case v3.ClusterType:
		for i, a := range res {
			c := &cluster.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				return err
			}
			if c.Name != "snp_shim" {
				continue
			}
			for _, le := range c.GetLoadAssignment().GetEndpoints() {
				for _, ep := range le.LbEndpoints {
					sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
					if sa != nil {
						sa.Address = "127.0.0.1"
						sa.PortSpecifier = &core.SocketAddress_PortValue{PortValue: uint32(z.shimPort)}
					}
				}
			}
			var err error
			if res[i], err = anypb.New(c); err != nil {
				return err
			}
		}
	}
	return nil
}

// agentProxy plays istio-agent's xDS proxy: Envoy's ADS stream (on the agent's Unix socket)
// is forwarded to istiod, and istiod's responses back, through the localizer.
type agentProxy struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	istiod *grpc.ClientConn
	z      localizer
	log    io.Writer
	// holdECDS: while this file does not exist, ECDS responses wait (the module "downloading").
	holdECDS string
}

// waitForModule waits until the test says the module has "arrived".
func (p *agentProxy) waitForModule() {
	for {
		if _, err := os.Stat(p.holdECDS); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pump sends what recv gets until either fails, and reports that failure.
func pump[T any](recv func() (T, error), send func(T) error, fail func(error)) {
	for {
		m, err := recv()
		if err == nil {
			err = send(m)
		}
		if err != nil {
			fail(err)
			return
		}
	}
}

// stream is one side of a gRPC bidirectional stream: it sends S and receives R.
type stream[S, R any] interface {
	Send(S) error
	Recv() (R, error)
}

// relay forwards one ADS stream, state of the world or delta alike: Envoy's requests go up
// to istiod unchanged, istiod's responses go down through deliver (which may hold one back
// and report a later failure with fail). It returns the first error of either direction.
func relay[Req, Resp any](down stream[Resp, Req], up stream[Req, Resp], deliver func(resp Resp, fail func(error)) error) error {
	errc := make(chan error, 3)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	go pump(down.Recv, up.Send, fail)
	go pump(up.Recv, func(m Resp) error { return deliver(m, fail) }, fail)
	return <-errc
}

func (p *agentProxy) StreamAggregatedResources(down discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	up, err := discovery.NewAggregatedDiscoveryServiceClient(p.istiod).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	return relay[*discovery.DiscoveryRequest, *discovery.DiscoveryResponse](down, up, func(resp *discovery.DiscoveryResponse, _ func(error)) error {
		if err := p.z.rewrite(resp.TypeUrl, resp.Resources); err != nil {
			fmt.Fprintf(p.log, "rewrite %s: %v\n", resp.TypeUrl, err)
		}
		fmt.Fprintf(p.log, "sotw %s: %d resources\n", resp.TypeUrl, len(resp.Resources))
		return down.Send(resp)
	})
}

func (p *agentProxy) DeltaAggregatedResources(down discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	up, err := discovery.NewAggregatedDiscoveryServiceClient(p.istiod).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	send := func(resp *discovery.DeltaDiscoveryResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return down.Send(resp)
	}
	return relay[*discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse](down, up, func(resp *discovery.DeltaDiscoveryResponse, fail func(error)) error {
		res := make([]*anypb.Any, len(resp.Resources))
		for i, r := range resp.Resources {
			res[i] = r.Resource
		}
		if err := p.z.rewrite(resp.TypeUrl, res); err != nil {
			fmt.Fprintf(p.log, "rewrite %s: %v\n", resp.TypeUrl, err)
		}
		for i, r := range resp.Resources {
			r.Resource = res[i]
		}
		fmt.Fprintf(p.log, "delta %s: %d resources, %d removed\n", resp.TypeUrl, len(resp.Resources), len(resp.RemovedResources))
		if p.holdECDS != "" && resp.TypeUrl == v3.ExtensionConfigurationType {
			go func() {
				p.waitForModule()
				fmt.Fprintf(p.log, "delta %s: released\n", resp.TypeUrl)
				if err := send(resp); err != nil {
					fail(err)
				}
			}()
			return nil
		}
		return send(resp)
	})
}

// sdsServer plays istio-agent's SDS server: the workload certificate ("default") and the
// mesh's root ("ROOTCA"), from a CA made at start-up. Istio's clusters and listeners name
// these secrets whether or not a connection uses mTLS, and Envoy waits for them.
type sdsServer struct {
	secret.UnimplementedSecretDiscoveryServiceServer
	secrets map[string]*anypb.Any
}

func newSDS() (*sdsServer, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	spiffe, _ := url.Parse(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", appNamespace, appName))
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		URIs: []*url.URL{spiffe}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	pemOf := func(t string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: t, Bytes: b}) }
	inline := func(b []byte) *core.DataSource {
		return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
	}
	def, err := anypb.New(&tls.Secret{Name: "default", Type: &tls.Secret_TlsCertificate{TlsCertificate: &tls.TlsCertificate{
		CertificateChain: inline(pemOf("CERTIFICATE", leafDER)), PrivateKey: inline(pemOf("PRIVATE KEY", keyDER)),
	}}})
	if err != nil {
		return nil, err
	}
	root, err := anypb.New(&tls.Secret{Name: "ROOTCA", Type: &tls.Secret_ValidationContext{ValidationContext: &tls.CertificateValidationContext{
		TrustedCa: inline(pemOf("CERTIFICATE", caDER)),
	}}})
	if err != nil {
		return nil, err
	}
	return &sdsServer{secrets: map[string]*anypb.Any{"default": def, "ROOTCA": root}}, nil
}

func (s *sdsServer) StreamSecrets(stream secret.SecretDiscoveryService_StreamSecretsServer) error {
	sent := map[string]bool{}
	nonce := 0
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		var res []*anypb.Any
		fresh := false
		for _, n := range req.ResourceNames {
			if a, ok := s.secrets[n]; ok {
				res = append(res, a)
				if !sent[n] {
					fresh = true
				}
			}
		}
		if !fresh {
			continue // an ACK, or names this agent does not have
		}
		nonce++
		for _, n := range req.ResourceNames {
			sent[n] = true
		}
		if err := stream.Send(&discovery.DiscoveryResponse{
			VersionInfo: "1", TypeUrl: v3.SecretType, Resources: res, Nonce: strconv.Itoa(nonce),
		}); err != nil {
			return err
		}
	}
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	_ = os.Remove(path)
	return net.Listen("unix", path)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	var c common
	c.register(fs)
	dir := fs.String("dir", "", "Envoy's working directory: the agent's sockets and envoy.json go here")
	shimPort := fs.Int("shim-port", 0, "the shim's gRPC port on 127.0.0.1")
	holdModule := fs.Bool("hold-module", false, "hold ECDS (delta xDS) until DIR/module-ready exists, as if the agent were still downloading the module")
	_ = fs.Parse(args)
	if *dir == "" || *shimPort == 0 || c.wasm == "" {
		return fmt.Errorf("--dir, --shim-port and --wasm are required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	ports := make([]int, 6)
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return err
		}
	}
	admin, status, prom, outbound, inbound, lport := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]

	f := &failer{}
	defer f.Cleanup(nil)
	// The shim's endpoint is itself (127.0.0.1:<shim port>), so Istio's own route to the
	// Service reaches the real shim too (before the filter's configuration arrives).
	s, err := startIstiod(f, &c, world{shimIP: "127.0.0.1", shimPort: *shimPort, outboundPort: uint32(outbound), inboundPort: uint32(inbound)})
	if err != nil {
		return err
	}
	configPath := filepath.Join(abs, "etc", "istio", "proxy")
	sc, err := newSidecar(&c, agentPorts{admin: admin, status: status, prometheus: prom, configPath: configPath})
	if err != nil {
		return err
	}
	bootPath := filepath.Join(abs, "envoy.json")
	if err := os.WriteFile(bootPath, sc.bootstrap, 0o644); err != nil {
		return err
	}
	conn, err := dialIstiod(s)
	if err != nil {
		return err
	}
	defer conn.Close()

	logf, err := os.Create(filepath.Join(abs, "agent.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	z := localizer{wasm: c.wasm, listenerPort: lport, shimPort: *shimPort}
	hold := ""
	if *holdModule {
		hold = filepath.Join(abs, "module-ready")
	}
	xdsL, err := listenUnix(filepath.Join(configPath, "XDS"))
	if err != nil {
		return err
	}
	// The template's SDS cluster dials ./var/run/secrets/workload-spiffe-uds/socket: Envoy runs in DIR.
	sdsL, err := listenUnix(filepath.Join(abs, "var", "run", "secrets", "workload-spiffe-uds", "socket"))
	if err != nil {
		return err
	}
	sds, err := newSDS()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	xdsSrv, sdsSrv := grpc.NewServer(), grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(xdsSrv, &agentProxy{istiod: conn, z: z, log: logf, holdECDS: hold})
	secret.RegisterSecretDiscoveryServiceServer(sdsSrv, sds)
	wg.Add(2)
	go func() { defer wg.Done(); _ = xdsSrv.Serve(xdsL) }()
	go func() { defer wg.Done(); _ = sdsSrv.Serve(sdsL) }()

	ready, _ := json.Marshal(map[string]any{
		"bootstrap": bootPath, "admin_port": admin, "listener_port": lport,
		"outbound_port": outbound, "inbound_port": inbound, "substitutions": z.substitutions(),
		"istiod_env": istiodEnv,
	})
	fmt.Printf("READY %s\n", ready)
	_ = os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	xdsSrv.Stop()
	sdsSrv.Stop()
	wg.Wait()
	return nil
}

// Command snp-test-apiserver is a real Kubernetes API server for custom
// resources, for integration tests: the upstream apiextensions-apiserver
// (the code that serves CRDs inside kube-apiserver) over an embedded etcd,
// in one process, with client-certificate authentication.
//
// It serves CRDs and custom resources only: no core API (namespaces, pods,
// ...), no admission plugins, no controllers besides the CRD ones.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	noopoteltrace "go.opentelemetry.io/otel/trace/noop"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	serveroptions "k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	apiserverapi "k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

func main() {
	dataDir := flag.String("data-dir", "", "state directory; etcd keeps its data in <data-dir>/etcd (default: a temporary directory, removed on exit)")
	certDir := flag.String("cert-dir", "", "where the CA, serving and client certs live; reused if present (default: <data-dir>/certs)")
	port := flag.Int("port", 0, "HTTPS port on 127.0.0.1 (0: any free port)")
	kubeconfigOut := flag.String("kubeconfig-out", "", "where to write the client kubeconfig (default: <data-dir>/kubeconfig)")
	klog.InitFlags(nil) // -v etc. for the apiserver's own logs
	flag.Parse()

	if err := run(*dataDir, *certDir, *port, *kubeconfigOut); err != nil {
		fmt.Fprintln(os.Stderr, "snp-test-apiserver:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "snp-test-apiserver: stopped cleanly")
}

func run(dataDir, certDir string, port int, kubeconfigOut string) error {
	if dataDir == "" {
		tmp, err := os.MkdirTemp("", "snp-test-apiserver-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dataDir = tmp
	}
	if certDir == "" {
		certDir = filepath.Join(dataDir, "certs")
	}
	if kubeconfigOut == "" {
		kubeconfigOut = filepath.Join(dataDir, "kubeconfig")
	}
	if err := ensureCerts(certDir); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	// First signal: graceful stop (apiserver, then etcd). Then the default
	// handlers come back, so a second signal kills at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { <-ctx.Done(); stop() }()

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// Runs after the apiserver has returned: its storage layer must not see
	// etcd vanish while it is still draining requests.
	defer etcd.Close()

	// Bind ourselves so that --port=0 works and we know the port for the
	// kubeconfig before the server runs.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if err != nil {
		return err
	}
	port = ln.Addr().(*net.TCPAddr).Port
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)

	server, err := newAPIServer(ln, certDir, etcdURL)
	if err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	if err := writeKubeconfig(kubeconfigOut, serverURL, certDir); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	errCh := make(chan error, 1)
	go func() { errCh <- server.GenericAPIServer.PrepareRun().RunWithContext(ctx) }()

	if err := waitReady(ctx, serverURL, certDir, errCh); err != nil {
		return err
	}
	// The one line on stdout; everything else goes to stderr.
	fmt.Printf("READY %s\n", serverURL)

	select {
	case err = <-errCh:
	case <-ctx.Done():
		// Graceful stop normally takes about a second; never let a stuck
		// connection turn a test's stop into a hang.
		select {
		case err = <-errCh:
		case <-time.After(15 * time.Second):
			err = errors.New("apiserver did not stop within 15s after the signal")
		}
	}
	klog.Infof("apiserver stopped (err=%v); stopping etcd", err)
	return err
}

// startEtcd runs a single-member etcd on loopback. Both of its ports are
// picked by the kernel: nothing but this process ever talks to it.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "snp-test"
	cfg.Dir = dir
	// Port 0 in the peer URL is stored in the member list, which is fine: a
	// single member never dials a peer, and restarts with other ports work.
	lo := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{lo}, []url.URL{lo}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{lo}, []url.URL{lo}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// A test server: skipping fsync makes every write several times faster.
	// A killed process loses nothing (the page cache survives it); only a
	// machine crash could, and then the test run is gone anyway.
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready after 60s")
	}
	return e, "http://" + e.Clients[0].Addr().String(), nil
}

// newAPIServer builds the apiextensions-apiserver much as its own
// options.Config does, minus the parts that need a core kube-apiserver to
// delegate to (CoreAPI informers, admission, priority-and-fairness,
// delegated authn/authz).
func newAPIServer(ln net.Listener, certDir, etcdURL string) (*apiserver.CustomResourceDefinitions, error) {
	o := serveroptions.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	ro := o.RecommendedOptions

	ro.Etcd.StorageConfig.Transport.ServerList = []string{etcdURL}

	ro.SecureServing.Listener = ln
	ro.SecureServing.BindAddress = net.IPv4(127, 0, 0, 1)
	ro.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	ro.SecureServing.ExternalAddress = net.IPv4(127, 0, 0, 1)
	ro.SecureServing.ServerCert.CertKey.CertFile = filepath.Join(certDir, servingCert)
	ro.SecureServing.ServerCert.CertKey.KeyFile = filepath.Join(certDir, servingKey)

	// These would look for a kube-apiserver (in-cluster config, the
	// extension-apiserver-authentication configmap, TokenReview,
	// SubjectAccessReview, namespace/webhook admission): there is none.
	ro.CoreAPI = nil
	ro.Admission = nil
	ro.Features.EnablePriorityAndFairness = false
	ro.Authentication = nil // replaced below by client certs only
	// Authorization keeps its upstream defaults, which without a remote
	// authorizer reduce to: group system:masters may do anything, and
	// /healthz, /readyz, /livez are open to any *authenticated* user.
	ro.Authorization.RemoteKubeConfigFileOptional = true

	// Without this, open watches hold the HTTP server's graceful shutdown
	// for its whole timeout (60 s): only with a grace period set are watch
	// handlers told to return when shutdown starts. Clients then see the
	// stream end and re-watch, as against a restarting kube-apiserver.
	o.ServerRunOptions.ShutdownWatchTerminationGracePeriod = 2 * time.Second

	if err := o.ServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	if err := o.Complete(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}

	cfg := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	if err := o.ServerRunOptions.ApplyTo(&cfg.Config); err != nil {
		return nil, err
	}
	if err := ro.ApplyTo(cfg); err != nil {
		return nil, err
	}
	if err := o.APIEnablement.ApplyTo(&cfg.Config, apiserver.DefaultAPIResourceConfigSource(), apiserver.Scheme); err != nil {
		return nil, err
	}

	// Client-certificate authentication with anonymous requests refused.
	// The upstream DelegatingAuthenticationOptions hard-codes anonymous on,
	// hence building the authenticator here. Complete() later puts the
	// loopback token authenticator (used by the CRD controllers) in front.
	caPEM, err := os.ReadFile(filepath.Join(certDir, caCertFile))
	if err != nil {
		return nil, err
	}
	ca, err := dynamiccertificates.NewStaticCAContent("client-ca", caPEM)
	if err != nil {
		return nil, err
	}
	if err := cfg.Authentication.ApplyClientCert(ca, cfg.SecureServing); err != nil {
		return nil, err
	}
	cfg.Authentication.Authenticator, _, err = authenticatorfactory.DelegatingAuthenticatorConfig{
		Anonymous:                          &apiserverapi.AnonymousAuthConfig{Enabled: false},
		ClientCertificateCAContentProvider: ca,
	}.New()
	if err != nil {
		return nil, err
	}

	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(
		openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions),
		openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme))

	config := &apiserver.Config{
		GenericConfig: cfg,
		ExtraConfig: apiserver.ExtraConfig{
			CRDRESTOptionsGetter: serveroptions.NewCRDRESTOptionsGetter(*ro.Etcd, cfg.ResourceTransformers, cfg.StorageObjectCountTracker),
			ServiceResolver:      noServices{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, cfg.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}
	server, err := config.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}
	installRootDiscovery(server.GenericAPIServer, ln.Addr().String())
	return server, nil
}

// noServices stands in for the Service lister upstream uses to reach
// conversion webhooks: without a core API there are no Services.
type noServices struct{}

func (noServices) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("service %s/%s: no core API here, conversion webhooks via services are unsupported", namespace, name)
}

// writeKubeconfig writes a self-contained kubeconfig (certs embedded as
// data), usable by kubectl, client-go and kube-rs alike.
func writeKubeconfig(path, serverURL, certDir string) error {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(certDir, name))
		if err != nil {
			panic(err) // ensureCerts just made or checked them
		}
		return b
	}
	const name = "snp-test"
	kc := clientcmdapi.NewConfig()
	kc.Clusters[name] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: read(caCertFile)}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: read(clientCertFile), ClientKeyData: read(clientKeyFile)}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "default"}
	kc.CurrentContext = name
	// Write then rename, so a client never reads a half-written file.
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*kc, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

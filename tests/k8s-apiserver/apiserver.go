package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	kas "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kasoptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// The kubeconfig of each identity, in --data-dir. The admin's is plain "kubeconfig",
// what a person reaching for kubectl expects.
func kubeconfigFile(id identity) string {
	if id.name == admin.name {
		return "kubeconfig"
	}
	return id.name + ".kubeconfig"
}

// apiserver runs kube-apiserver over an embedded etcd until SIGTERM or SIGINT.
//
// Flags of its own come first; arguments after "--" go to kube-apiserver as they are
// (and win over the ones set here, being parsed last).
func apiserver(argv []string) int {
	fs := flag.NewFlagSet("apiserver", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "state directory (required): certs/, etcd/, one kubeconfig per identity")
	port := fs.Int("port", 0, "HTTPS port on 127.0.0.1 (0: any free port)")
	verbosity := fs.Int("v", 0, "kube-apiserver's log verbosity")
	if err := fs.Parse(argv); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "snp-k8s apiserver: --data-dir is required")
		return 2
	}
	extra := fs.Args()
	if len(extra) > 0 && extra[0] == "--" {
		extra = extra[1:]
	}
	if err := runAPIServer(*dataDir, *port, *verbosity, extra); err != nil {
		fmt.Fprintln(os.Stderr, "snp-k8s apiserver:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "snp-k8s apiserver: stopped cleanly")
	return 0
}

func runAPIServer(dataDir string, port, verbosity int, extra []string) error {
	certDir := filepath.Join(dataDir, "certs")
	if err := ensureCerts(certDir); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	// kube-apiserver's own signal handling: the first SIGTERM/SIGINT starts a graceful
	// stop, a second one exits at once. It may be set up only once per process.
	ctx := genericapiserver.SetupSignalContext()

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// Runs after kube-apiserver has returned: its storage must not see etcd vanish while
	// it is still draining requests.
	defer etcd.Close()

	// Bind here so that --port=0 works and the port is known for the kubeconfigs before
	// the server runs; kube-apiserver serves on this listener.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if err != nil {
		return err
	}
	port = ln.Addr().(*net.TCPAddr).Port
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", port)
	for _, id := range identities {
		if err := writeKubeconfig(filepath.Join(dataDir, kubeconfigFile(id)), serverURL, certDir, id); err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
	}

	cert := func(name string) string { return filepath.Join(certDir, name) }
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + cert(servingCert),
		"--tls-private-key-file=" + cert(servingKey),
		// Client certificates signed by the CA are the way in; users come from their CN,
		// groups from their O fields.
		"--client-ca-file=" + cert(caCertFile),
		"--authorization-mode=RBAC",
		// Service-account tokens: for the controller manager's controllers, and for any
		// test that asks the TokenRequest API for one.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cert(saPublicFile),
		"--service-account-signing-key-file=" + cert(saKeyFile),
		"--service-cluster-ip-range=10.96.0.0/16",
		// The default reconciler keeps the kubernetes Service's endpoints at the advertise
		// address, and refuses a loopback one: there is one apiserver and no Service
		// traffic here.
		"--endpoint-reconciler-type=none",
		// Without it, one open watch holds a graceful stop for its whole timeout (about
		// 60 s); with it, watches end at once and clients re-watch, as against a real
		// restarting kube-apiserver.
		"--shutdown-watch-termination-grace-period=2s",
		"--profiling=false",
		fmt.Sprintf("--v=%d", verbosity),
	}
	args = append(args, extra...)

	// What kube-apiserver's cobra command does (cmd/kube-apiserver/app.NewAPIServerCommand),
	// minus cobra, plus the listener above.
	s := kasoptions.NewServerRunOptions()
	flags := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		flags.AddFlagSet(f)
	}
	if err := flags.Parse(args); err != nil {
		return err
	}
	s.SecureServing.Listener = ln
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{}) // its loopback clients' own warnings
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	s.GenericServerRunOptions.ComponentGlobalsRegistry.AddMetrics()
	klog.Infof("kube-apiserver %s", strings.Join(args, " "))

	errCh := make(chan error, 1)
	go func() { errCh <- kas.Run(ctx, completed) }()

	if err := waitReady(ctx, serverURL, certDir, errCh); err != nil {
		return err
	}
	// The one line on stdout; everything else goes to stderr.
	fmt.Printf("READY %s\n", serverURL)

	select {
	case err = <-errCh:
	case <-ctx.Done():
		// Graceful stop takes a few seconds; never let a stuck connection turn a test's
		// stop into a hang.
		select {
		case err = <-errCh:
		case <-time.After(30 * time.Second):
			err = errors.New("kube-apiserver did not stop within 30s after the signal")
		}
	}
	klog.Infof("kube-apiserver stopped (err=%v); stopping etcd", err)
	return err
}

// startEtcd runs a single-member etcd on loopback. Both of its ports are picked by the
// kernel: nothing but this process ever talks to it.
func startEtcd(dir string) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "snp-test"
	cfg.Dir = dir
	// Port 0 in the peer URL is stored in the member list, which is fine: a single
	// member never dials a peer, and restarts with other ports work.
	lo := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{lo}, []url.URL{lo}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{lo}, []url.URL{lo}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// A test server: skipping fsync makes every write several times faster. A killed
	// process loses nothing (the page cache survives it); only a machine crash could,
	// and then the test run is gone anyway.
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

// writeKubeconfig writes a self-contained kubeconfig for id (certs embedded as data),
// usable by kubectl, client-go and kube-rs alike. The same inputs give the same bytes, so
// a restart on the same port leaves every client's kubeconfig valid.
func writeKubeconfig(path, serverURL, certDir string, id identity) error {
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(certDir, name)) }
	ca, err := read(caCertFile)
	if err != nil {
		return err
	}
	crt, err := read(certFile(id))
	if err != nil {
		return err
	}
	key, err := read(keyFile(id))
	if err != nil {
		return err
	}
	const cluster = "snp-test"
	kc := clientcmdapi.NewConfig()
	kc.Clusters[cluster] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: ca}
	kc.AuthInfos[id.name] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	kc.Contexts[id.name] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: id.name, Namespace: "default"}
	kc.CurrentContext = id.name
	// Write then rename, so a client never reads a half-written file.
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*kc, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

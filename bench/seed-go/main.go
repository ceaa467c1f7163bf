// Command seed-go is the seed registration server's algorithm in Go (see snp.go): the peer
// that snp's benchmarks measure against. It is not part of the product.
//
//	seed-go --grpc-addr 127.0.0.1:15051 --kubeconfig shim.kubeconfig
//
// On SIGTERM or SIGINT it stops serving and prints one line with its counters:
//
//	STATS calls=4000 pushes=12 tries=260 failed=20 dropped=4
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	addr := flag.String("grpc-addr", "127.0.0.1:15051", "gRPC listen address")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the server's identity (empty: in-cluster rules of client-go)")
	group := flag.String("group", "extensions.istio.io", "API group of ServiceNameMapping")
	version := flag.String("version", "v1alpha1", "API version of ServiceNameMapping")
	// istiod's defaults (pilot-discovery --kubernetesApiQPS / --kubernetesApiBurst), which the
	// seed's client inherits.
	qps := flag.Float64("qps", 80, "client-side request rate limit (requests/s)")
	burst := flag.Int("burst", 160, "client-side request burst")
	// The seed's features.SNPDebounceAfter / SNPDebounceMax / SNPEnableDebounce defaults.
	after := flag.Duration("debounce-after", 100*time.Millisecond, "push after this long without a request")
	max := flag.Duration("debounce-max", time.Second, "push at the latest this long after the first request")
	debounce := flag.Bool("debounce", true, "merge requests before pushing")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS = float32(*qps)
	cfg.Burst = *burst
	client, err := newMappingsClient(cfg, *group, *version)
	if err != nil {
		log.Fatalf("client: %v", err)
	}

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	s := newSnp(client, *after, *max, *debounce)
	stop := make(chan struct{})
	s.start(stop)
	server := grpc.NewServer(grpc.ForceServerCodec(codec{}))
	server.RegisterService(&serviceDesc, s)
	fmt.Printf("LISTENING %s\n", lis.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		server.GracefulStop()
	}()
	if err := server.Serve(lis); err != nil {
		log.Printf("serve: %v", err)
	}
	close(stop)
	fmt.Printf("STATS calls=%d pushes=%d tries=%d failed=%d dropped=%d\n",
		s.stats.calls.Load(), s.stats.pushes.Load(), s.stats.tries.Load(),
		s.stats.failed.Load(), s.stats.dropped.Load())
}

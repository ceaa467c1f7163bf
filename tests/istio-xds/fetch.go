package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pilot/test/xds"
)

// served is what istiod sent the sidecar, by xDS type, each resource by name.
type served struct {
	listeners map[string]*listener.Listener
	clusters  map[string]*cluster.Cluster
	routes    map[string]*anypb.Any // RouteConfiguration
	endpoints map[string]*anypb.Any // ClusterLoadAssignment
	ecds      map[string]*anypb.Any // TypedExtensionConfig
	// order of names as served
	listenerNames, clusterNames []string
}

// dialIstiod connects to the fake istiod's in-memory gRPC listener.
func dialIstiod(s *xds.FakeDiscoveryServer) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///istiod",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return s.BufListener.Dial() }))
}

// fetchAll asks istiod for everything, over ADS the way Envoy does: CDS, then EDS for the EDS
// clusters, LDS, RDS for the route configurations the listeners name, and ECDS for the
// filters they fetch by config_discovery. Each response is ACKed.
func fetchAll(s *xds.FakeDiscoveryServer, node *core.Node) (*served, error) {
	conn, err := dialIstiod(s)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	fetch := func(typeURL string, names []string) ([]*anypb.Any, error) {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names}); err != nil {
			return nil, err
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", typeURL, err)
			}
			ack := &discovery.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names}
			if err := stream.Send(ack); err != nil {
				return nil, err
			}
			if resp.TypeUrl == typeURL {
				return resp.Resources, nil
			}
		}
	}
	out := &served{
		listeners: map[string]*listener.Listener{}, clusters: map[string]*cluster.Cluster{},
		routes: map[string]*anypb.Any{}, endpoints: map[string]*anypb.Any{}, ecds: map[string]*anypb.Any{},
	}
	cds, err := fetch(v3.ClusterType, nil)
	if err != nil {
		return nil, err
	}
	var edsNames []string
	for _, a := range cds {
		c := &cluster.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			return nil, err
		}
		out.clusters[c.Name] = c
		out.clusterNames = append(out.clusterNames, c.Name)
		if c.GetType() == cluster.Cluster_EDS {
			edsNames = append(edsNames, c.Name)
		}
	}
	if len(edsNames) > 0 {
		eds, err := fetch(v3.EndpointType, edsNames)
		if err != nil {
			return nil, err
		}
		for _, a := range eds {
			out.endpoints[resourceName(a)] = a
		}
	}
	lds, err := fetch(v3.ListenerType, nil)
	if err != nil {
		return nil, err
	}
	var rdsNames, ecdsNames []string
	for _, a := range lds {
		l := &listener.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			return nil, err
		}
		out.listeners[l.Name] = l
		out.listenerNames = append(out.listenerNames, l.Name)
		for _, h := range hcms(l) {
			if r := h.GetRds().GetRouteConfigName(); r != "" && !contains(rdsNames, r) {
				rdsNames = append(rdsNames, r)
			}
			for _, f := range h.HttpFilters {
				if f.GetConfigDiscovery() != nil && !contains(ecdsNames, f.Name) {
					ecdsNames = append(ecdsNames, f.Name)
				}
			}
		}
	}
	if len(rdsNames) > 0 {
		rds, err := fetch(v3.RouteType, rdsNames)
		if err != nil {
			return nil, err
		}
		for _, a := range rds {
			out.routes[resourceName(a)] = a
		}
	}
	if len(ecdsNames) > 0 {
		ecds, err := fetch(v3.ExtensionConfigurationType, ecdsNames)
		if err != nil {
			return nil, err
		}
		for _, a := range ecds {
			out.ecds[resourceName(a)] = a
		}
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// hcms returns the HTTP connection managers of every filter chain of a listener (default
// chain included), decoded.
func hcms(l *listener.Listener) []*hcm.HttpConnectionManager {
	var out []*hcm.HttpConnectionManager
	chains := append([]*listener.FilterChain{}, l.FilterChains...)
	if l.DefaultFilterChain != nil {
		chains = append(chains, l.DefaultFilterChain)
	}
	for _, fc := range chains {
		for _, f := range fc.Filters {
			h := &hcm.HttpConnectionManager{}
			if f.GetTypedConfig() != nil && f.GetTypedConfig().MessageIs(h) {
				if err := f.GetTypedConfig().UnmarshalTo(h); err == nil {
					out = append(out, h)
				}
			}
		}
	}
	return out
}

// resourceName reads the name of any resource istiod serves.
func resourceName(a *anypb.Any) string {
	m, err := a.UnmarshalNew()
	if err != nil {
		return ""
	}
	type named interface{ GetName() string }
	type clusterNamed interface{ GetClusterName() string }
	switch v := m.(type) {
	case clusterNamed:
		return v.GetClusterName()
	case named:
		return v.GetName()
	}
	return ""
}

var marshal = protojson.MarshalOptions{UseProtoNames: true}

// toJSON renders a proto as Envoy's YAML/JSON configuration would spell it, as a generic value.
func toJSON(m proto.Message) (map[string]any, error) {
	b, err := marshal.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = json.Unmarshal(b, &out)
	return out, err
}

// anyJSON renders the message inside an Any.
func anyJSON(a *anypb.Any) (map[string]any, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, err
	}
	return toJSON(m)
}

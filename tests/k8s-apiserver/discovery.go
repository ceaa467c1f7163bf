package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	restful "github.com/emicklei/go-restful/v3"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/apiserver/pkg/endpoints/handlers/negotiation"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	genericapiserver "k8s.io/apiserver/pkg/server"
)

// Inside kube-apiserver, the root discovery documents /api and /apis come
// from the aggregator and the core API, not from the apiextensions server,
// which turns its own /apis off. Alone, it would answer 404 there, and
// clients that discover resources first (kubectl, kube-rs's Discovery)
// would see no custom resources at all. So we serve both:
//   - /apis: the upstream aggregated document (kept current by the CRD
//     discovery controller) and, for older clients, the same groups as a
//     plain APIGroupList;
//   - /api and /api/v1: a core group "v1" with no resources. kube-rs's
//     Discovery::run fails on a core group with no versions, and every real
//     server has core v1, so an empty v1 is the least surprising answer.
const aggregatedAccept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

func installRootDiscovery(s *genericapiserver.GenericAPIServer, hostPort string) {
	agg := s.AggregatedDiscoveryGroupManager
	apis := aggregated.WrapAggregatedDiscoveryToHandler(legacyGroupList(agg), agg, nil)
	// The director hands exactly /apis and /apis/ to a go-restful service
	// rooted at /apis; everything below still goes to the CRD handler.
	s.Handler.GoRestfulContainer.Add(apis.GenerateWebService("/apis", metav1.APIGroupList{}))

	s.AggregatedLegacyDiscoveryGroupManager.AddGroupVersion("", apidiscoveryv2.APIVersionDiscovery{
		Version: "v1", Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent,
	})
	api := aggregated.WrapAggregatedDiscoveryToHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// serverAddressByClientCIDRs is a required field (typed clients such
		// as k8s-openapi reject null); kube-apiserver fills it the same way.
		writeNegotiated(w, r, &metav1.APIVersions{
			Versions: []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{
				{ClientCIDR: "0.0.0.0/0", ServerAddress: hostPort},
			},
		})
	}), s.AggregatedLegacyDiscoveryGroupManager, nil)
	ws := api.GenerateWebService("/api", metav1.APIVersions{})
	// Operation names it so the OpenAPI builder, which walks every
	// go-restful route, accepts it.
	ws.Route(ws.GET("/v1").To(func(req *restful.Request, resp *restful.Response) {
		writeNegotiated(resp.ResponseWriter, req.Request, &metav1.APIResourceList{
			GroupVersion: "v1", APIResources: []metav1.APIResource{},
		})
	}).Operation("getCoreAPIResources").Writes(metav1.APIResourceList{}))
	s.Handler.GoRestfulContainer.Add(ws)
}

// legacyGroupList derives an APIGroupList from the aggregated document, so
// both forms always list the same groups. Versions in the aggregated form
// are already sorted by preference, so the first one is the preferred one.
func legacyGroupList(agg http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := r.Clone(r.Context())
		req.Header.Set("Accept", aggregatedAccept)
		rec := httptest.NewRecorder()
		agg.ServeHTTP(rec, req)
		var doc apidiscoveryv2.APIGroupDiscoveryList
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); rec.Code != http.StatusOK || err != nil {
			responsewriters.InternalError(w, r, fmt.Errorf("aggregated discovery: HTTP %d: %v", rec.Code, err))
			return
		}
		list := &metav1.APIGroupList{Groups: []metav1.APIGroup{}}
		for _, g := range doc.Items {
			group := metav1.APIGroup{Name: g.Name}
			for _, v := range g.Versions {
				group.Versions = append(group.Versions, metav1.GroupVersionForDiscovery{
					GroupVersion: g.Name + "/" + v.Version, Version: v.Version,
				})
			}
			if len(group.Versions) == 0 {
				continue
			}
			group.PreferredVersion = group.Versions[0]
			list.Groups = append(list.Groups, group)
		}
		writeNegotiated(w, r, list)
	})
}

// writeNegotiated answers in JSON, YAML or protobuf as the client asked,
// as the upstream discovery handlers do.
func writeNegotiated(w http.ResponseWriter, r *http.Request, obj runtime.Object) {
	responsewriters.WriteObjectNegotiated(apiserver.Codecs, negotiation.DefaultEndpointRestrictions,
		schema.GroupVersion{}, w, r, http.StatusOK, obj, false)
}

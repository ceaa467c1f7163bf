package main

// A typed client-go client for the ServiceNameMapping custom resource, written the way
// client-gen writes one (the seed uses Istio's generated clientset): a rest.RESTClient for
// the group/version, and Get/Create/Update that decode into a new object. As in generated
// clients, Create and Update return a non-nil (empty) object together with an error: the
// seed's getOrCreateSnp relies on that when a create fails with anything but
// AlreadyExists.

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// ServiceNameMappingSpec is the seed's spec (istio.io/api extensions/v1alpha1 in its fork).
type ServiceNameMappingSpec struct {
	InterfaceName    string   `json:"interfaceName,omitempty"`
	ApplicationNames []string `json:"applicationNames,omitempty"`
}

// ServiceNameMapping is the custom resource.
type ServiceNameMapping struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ServiceNameMappingSpec `json:"spec"`
}

// ServiceNameMappingList is its list type (the scheme wants one).
type ServiceNameMappingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ServiceNameMapping `json:"items"`
}

// DeepCopyObject implements runtime.Object.
func (in *ServiceNameMapping) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := new(ServiceNameMapping)
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.InterfaceName = in.Spec.InterfaceName
	if in.Spec.ApplicationNames != nil {
		out.Spec.ApplicationNames = append([]string(nil), in.Spec.ApplicationNames...)
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *ServiceNameMappingList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := new(ServiceNameMappingList)
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopyObject().(*ServiceNameMapping))
	}
	return out
}

const resource = "servicenamemappings"

// mappingClient is ServiceNameMappings(namespace) of a generated clientset.
type mappingClient struct {
	rest rest.Interface
	ns   string
}

// mappingsClient holds the REST client of the group/version.
type mappingsClient struct {
	rest rest.Interface
}

// newMappingsClient makes the client for group/version from cfg.
func newMappingsClient(cfg *rest.Config, group, version string) (*mappingsClient, error) {
	gv := schema.GroupVersion{Group: group, Version: version}
	scheme := runtime.NewScheme()
	scheme.AddKnownTypes(gv, &ServiceNameMapping{}, &ServiceNameMappingList{})
	metav1.AddToGroupVersion(scheme, gv)
	// metav1.Status and friends, as the clientset scheme registers them.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = "/apis"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, err
	}
	return &mappingsClient{rest: rc}, nil
}

// ServiceNameMappings is the namespaced client.
func (c *mappingsClient) ServiceNameMappings(namespace string) *mappingClient {
	return &mappingClient{rest: c.rest, ns: namespace}
}

func (c *mappingClient) Get(ctx context.Context, name string, opts metav1.GetOptions) (*ServiceNameMapping, error) {
	result := &ServiceNameMapping{}
	err := c.rest.Get().Namespace(c.ns).Resource(resource).Name(name).
		VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(result)
	return result, err
}

func (c *mappingClient) Create(ctx context.Context, obj *ServiceNameMapping, opts metav1.CreateOptions) (*ServiceNameMapping, error) {
	result := &ServiceNameMapping{}
	err := c.rest.Post().Namespace(c.ns).Resource(resource).
		VersionedParams(&opts, metav1.ParameterCodec).Body(obj).Do(ctx).Into(result)
	return result, err
}

func (c *mappingClient) Update(ctx context.Context, obj *ServiceNameMapping, opts metav1.UpdateOptions) (*ServiceNameMapping, error) {
	result := &ServiceNameMapping{}
	err := c.rest.Put().Namespace(c.ns).Resource(resource).Name(obj.Name).
		VersionedParams(&opts, metav1.ParameterCodec).Body(obj).Do(ctx).Into(result)
	return result, err
}

package main

// The seed's registration API (crates/snp-proto/proto/dubbo/networking/v1alpha1/snp.proto,
// "flavour A"), with a hand-written codec: the machine has no protoc, and the two messages
// are three fields. The bytes are proto3's: strings are length-delimited fields, unknown
// fields are skipped, the response is empty.

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

// ServiceMappingRequest is dubbo.networking.v1alpha1.ServiceMappingRequest.
type ServiceMappingRequest struct {
	Namespace       string   // 1
	ApplicationName string   // 2
	InterfaceNames  []string // 3, repeated
}

// ServiceMappingResponse is dubbo.networking.v1alpha1.ServiceMappingResponse (no fields).
type ServiceMappingResponse struct{}

// Marshal encodes the request as proto3 does: empty strings are left out.
func (r *ServiceMappingRequest) Marshal() []byte {
	var b []byte
	if r.Namespace != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, r.Namespace)
	}
	if r.ApplicationName != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, r.ApplicationName)
	}
	for _, s := range r.InterfaceNames {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	return b
}

// Unmarshal decodes a request; fields it does not know are skipped.
func (r *ServiceMappingRequest) Unmarshal(b []byte) error {
	*r = ServiceMappingRequest{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && num >= 1 && num <= 3 {
			v, m := protowire.ConsumeString(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			b = b[m:]
			switch num {
			case 1:
				r.Namespace = v
			case 2:
				r.ApplicationName = v
			case 3:
				r.InterfaceNames = append(r.InterfaceNames, v)
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
	}
	return nil
}

// codec is the gRPC codec of the two messages, forced on the server.
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case *ServiceMappingResponse:
		return []byte{}, nil
	case *ServiceMappingRequest:
		return m.Marshal(), nil
	default:
		return nil, fmt.Errorf("codec: cannot marshal %T", v)
	}
}

func (codec) Unmarshal(data []byte, v any) error {
	switch m := v.(type) {
	case *ServiceMappingRequest:
		return m.Unmarshal(data)
	case *ServiceMappingResponse:
		return nil
	default:
		return fmt.Errorf("codec: cannot unmarshal into %T", v)
	}
}

// mappingServer is what the service needs from its implementation.
type mappingServer interface {
	RegisterServiceAppMapping(context.Context, *ServiceMappingRequest) (*ServiceMappingResponse, error)
}

func registerHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(ServiceMappingRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(mappingServer).RegisterServiceAppMapping(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return srv.(mappingServer).RegisterServiceAppMapping(ctx, req.(*ServiceMappingRequest))
	})
}

const fullMethod = "/dubbo.networking.v1alpha1.ServiceNameMappingService/registerServiceAppMapping"

// serviceDesc is what protoc-gen-go-grpc would generate for the service.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "dubbo.networking.v1alpha1.ServiceNameMappingService",
	HandlerType: (*mappingServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "registerServiceAppMapping", Handler: registerHandler},
	},
	Streams:  []grpc.StreamDesc{},
	Metadata: "dubbo/networking/v1alpha1/snp.proto",
}

//! The design brief's example request, byte for byte.

use prost::Message;
use snp_proto::{dubbo::ServiceMappingRequest, frame, RawServiceMappingRequest};

fn example() -> ServiceMappingRequest {
    ServiceMappingRequest {
        namespace: "default".into(),
        application_name: "demo-provider".into(),
        interface_names: vec!["org.apache.dubbo.demo.DemoService".into()],
    }
}

/// The 59 bytes, written out by hand from the protobuf encoding rules.
fn golden_bytes() -> Vec<u8> {
    let mut b = vec![0x0a, 7];
    b.extend_from_slice(b"default");
    b.extend_from_slice(&[0x12, 13]);
    b.extend_from_slice(b"demo-provider");
    b.extend_from_slice(&[0x1a, 33]);
    b.extend_from_slice(b"org.apache.dubbo.demo.DemoService");
    b
}

#[test]
fn example_request_is_59_bytes_and_round_trips() {
    let golden = golden_bytes();
    assert_eq!(golden.len(), 59);
    assert_eq!(example().encode_to_vec(), golden);
    assert_eq!(
        ServiceMappingRequest::decode(&golden[..]).unwrap(),
        example()
    );
}

#[test]
fn example_frame_has_the_documented_prefix() {
    let framed = frame::encode(&golden_bytes());
    assert_eq!(&framed[..5], &[0x00, 0x00, 0x00, 0x00, 0x3b]);
    let msg = frame::decode(&framed, 64 * 1024).unwrap();
    let raw = RawServiceMappingRequest::decode_bytes(msg).unwrap();
    assert_eq!(raw.namespace, b"default");
    assert_eq!(raw.application_name, b"demo-provider");
    assert_eq!(
        raw.interface_names,
        vec![b"org.apache.dubbo.demo.DemoService".to_vec()]
    );
}

#[test]
fn both_flavours_share_request_bytes() {
    let a = example().encode_to_vec();
    let b = snp_proto::admin::ServiceMappingRequest {
        namespace: "default".into(),
        application_name: "demo-provider".into(),
        interface_names: vec!["org.apache.dubbo.demo.DemoService".into()],
    }
    .encode_to_vec();
    assert_eq!(a, b);
}

#[test]
fn raw_decoding_keeps_invalid_utf8_for_validation_to_report() {
    let mut bad = vec![0x0a, 2, 0xff, 0xfe, 0x12, 1, b'a'];
    bad.extend_from_slice(&[0x1a, 1, b'I']);
    assert!(ServiceMappingRequest::decode(&bad[..]).is_err());
    let raw = RawServiceMappingRequest::decode_bytes(&bad).unwrap();
    assert_eq!(raw.namespace, vec![0xff, 0xfe]);
}

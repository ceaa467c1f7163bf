//! A do-nothing gRPC server with the shim's protos: both registration flavours answer OK
//! at once, `PushMappings` acknowledges, `GetMappings` echoes the requested interfaces with
//! one application. It is the upper bound of figure 4 (a shim can't be faster than a server
//! that does nothing with the same protos on the same tonic stack), and the upstream of
//! figure 2's non-registration traffic.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Result;
use snp_proto::api::mapping_service_server::{MappingService, MappingServiceServer};
use snp_proto::api::{
    GetMappingsRequest, GetMappingsResponse, MappingEvent, MappingState, PushMappingsRequest,
    PushMappingsResponse, WatchMappingsRequest,
};
use snp_proto::{admin, dubbo};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// The do-nothing services.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[tonic::async_trait]
impl dubbo::service_name_mapping_service_server::ServiceNameMappingService for Noop {
    async fn register_service_app_mapping(
        &self,
        _request: Request<dubbo::ServiceMappingRequest>,
    ) -> Result<Response<dubbo::ServiceMappingResponse>, Status> {
        Ok(Response::new(dubbo::ServiceMappingResponse {}))
    }
}

#[tonic::async_trait]
impl admin::service_name_mapping_service_server::ServiceNameMappingService for Noop {
    async fn register_service_app_mapping(
        &self,
        _request: Request<admin::ServiceMappingRequest>,
    ) -> Result<Response<admin::ServiceMappingResponse>, Status> {
        Ok(Response::new(admin::ServiceMappingResponse {
            success: true,
            message: "success".to_owned(),
        }))
    }
}

type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<MappingEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MappingService for Noop {
    async fn push_mappings(
        &self,
        request: Request<PushMappingsRequest>,
    ) -> Result<Response<PushMappingsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(PushMappingsResponse {
            batch_id: r.batch_id,
            unchanged: 0,
            written: u32::try_from(r.mappings.len()).unwrap_or(u32::MAX),
            results: Vec::new(),
        }))
    }

    async fn get_mappings(
        &self,
        request: Request<GetMappingsRequest>,
    ) -> Result<Response<GetMappingsResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(GetMappingsResponse {
            mappings: r
                .interface_names
                .into_iter()
                .map(|interface_name| MappingState {
                    namespace: r.namespace.clone(),
                    interface_name,
                    application_names: vec!["bench-app-0".to_owned()],
                    revision: "1".to_owned(),
                })
                .collect(),
        }))
    }

    type WatchMappingsStream = EventStream;

    async fn watch_mappings(
        &self,
        _request: Request<WatchMappingsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("the no-op server has no watches"))
    }
}

/// Serves the no-op services on `listener` until `shutdown` resolves, with the shim's
/// transport settings (tonic defaults, `TCP_NODELAY`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    debug_assert_eq!(
        <dubbo::service_name_mapping_service_server::ServiceNameMappingServiceServer<Noop> as NamedService>::NAME,
        "dubbo.networking.v1alpha1.ServiceNameMappingService"
    );
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(
            dubbo::service_name_mapping_service_server::ServiceNameMappingServiceServer::new(Noop),
        )
        .add_service(
            admin::service_name_mapping_service_server::ServiceNameMappingServiceServer::new(Noop),
        )
        .add_service(MappingServiceServer::new(Noop))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Binds `addr` (port 0: any free port) and returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

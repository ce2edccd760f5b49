//! Service names and method paths of the generated clients and servers are SPIRE's, and a
//! PermissionDenied carrying `PermissionDeniedDetails` survives a real gRPC round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio_stream::Stream;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use ward_proto::convert::{permission_denied, permission_denied_reason};
use ward_proto::grpc::health::v1 as health;
use ward_proto::spire::api::server::{
    agent, bundle, debug, entry, localauthority, logger, svid, trustdomain,
};
use ward_proto::spire::api::types::permission_denied_details::Reason;

#[test]
fn service_names_match_spire() {
    let names = [
        (<agent::v1::agent_server::AgentServer<()> as NamedService>::NAME, "spire.api.server.agent.v1.Agent"),
        (<bundle::v1::bundle_server::BundleServer<()> as NamedService>::NAME, "spire.api.server.bundle.v1.Bundle"),
        (<entry::v1::entry_server::EntryServer<()> as NamedService>::NAME, "spire.api.server.entry.v1.Entry"),
        (<svid::v1::svid_server::SvidServer<()> as NamedService>::NAME, "spire.api.server.svid.v1.SVID"),
        (
            <trustdomain::v1::trust_domain_server::TrustDomainServer<()> as NamedService>::NAME,
            "spire.api.server.trustdomain.v1.TrustDomain",
        ),
        (
            <localauthority::v1::local_authority_server::LocalAuthorityServer<()> as NamedService>::NAME,
            "spire.api.server.localauthority.v1.LocalAuthority",
        ),
        (<debug::v1::debug_server::DebugServer<()> as NamedService>::NAME, "spire.api.server.debug.v1.Debug"),
        (<logger::v1::logger_server::LoggerServer<()> as NamedService>::NAME, "spire.api.server.logger.v1.Logger"),
        (<health::health_server::HealthServer<()> as NamedService>::NAME, "grpc.health.v1.Health"),
    ];
    for (got, want) in names {
        assert_eq!(got, want);
    }
}

/// A transport that records the path of every request and answers Unimplemented, so the
/// generated clients can be driven without a server.
#[derive(Clone, Default)]
struct PathRecorder(Arc<Mutex<Vec<String>>>);

impl tower::Service<http::Request<tonic::body::Body>> for PathRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(req.uri().path().to_owned());
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(tonic::body::Body::empty())
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

#[tokio::test]
async fn client_method_paths_match_spire() {
    let rec = PathRecorder::default();
    let mut agent_c = agent::v1::agent_client::AgentClient::new(rec.clone());
    let mut entry_c = entry::v1::entry_client::EntryClient::new(rec.clone());
    let mut svid_c = svid::v1::svid_client::SvidClient::new(rec.clone());
    let mut bundle_c = bundle::v1::bundle_client::BundleClient::new(rec.clone());
    let mut health_c = health::health_client::HealthClient::new(rec.clone());

    let codes = [
        agent_c.attest_agent(tokio_stream::iter(vec![])).await.unwrap_err().code(),
        agent_c.renew_agent(agent::v1::RenewAgentRequest::default()).await.unwrap_err().code(),
        agent_c
            .create_join_token(agent::v1::CreateJoinTokenRequest::default())
            .await
            .unwrap_err()
            .code(),
        entry_c.sync_authorized_entries(tokio_stream::iter(vec![])).await.unwrap_err().code(),
        entry_c
            .get_authorized_entries(entry::v1::GetAuthorizedEntriesRequest::default())
            .await
            .unwrap_err()
            .code(),
        entry_c
            .batch_create_entry(entry::v1::BatchCreateEntryRequest::default())
            .await
            .unwrap_err()
            .code(),
        svid_c
            .batch_new_x509svid(svid::v1::BatchNewX509svidRequest::default())
            .await
            .unwrap_err()
            .code(),
        svid_c.new_jwtsvid(svid::v1::NewJwtsvidRequest::default()).await.unwrap_err().code(),
        bundle_c.get_bundle(bundle::v1::GetBundleRequest::default()).await.unwrap_err().code(),
        bundle_c
            .get_federated_bundle(bundle::v1::GetFederatedBundleRequest::default())
            .await
            .unwrap_err()
            .code(),
        health_c.check(health::HealthCheckRequest::default()).await.unwrap_err().code(),
        health_c.list(health::HealthListRequest::default()).await.unwrap_err().code(),
        health_c.watch(health::HealthCheckRequest::default()).await.unwrap_err().code(),
    ];
    assert!(codes.iter().all(|c| *c == Code::Unimplemented), "{codes:?}");
    assert_eq!(
        *rec.0.lock().unwrap(),
        [
            "/spire.api.server.agent.v1.Agent/AttestAgent",
            "/spire.api.server.agent.v1.Agent/RenewAgent",
            "/spire.api.server.agent.v1.Agent/CreateJoinToken",
            "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries",
            "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries",
            "/spire.api.server.entry.v1.Entry/BatchCreateEntry",
            "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
            "/spire.api.server.svid.v1.SVID/NewJWTSVID",
            "/spire.api.server.bundle.v1.Bundle/GetBundle",
            "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/List",
            "/grpc.health.v1.Health/Watch",
        ]
    );
}

/// A health service whose Check denies with a reason and whose List answers normally.
struct DenyingHealth;

type WatchStream = Pin<Box<dyn Stream<Item = Result<health::HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health::health_server::Health for DenyingHealth {
    async fn check(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<health::HealthCheckResponse>, Status> {
        Err(permission_denied(
            "agent \"spiffe://example.org/spire/agent/x\" is banned",
            Reason::AgentBanned,
        ))
    }

    async fn list(
        &self,
        _: Request<health::HealthListRequest>,
    ) -> Result<Response<health::HealthListResponse>, Status> {
        let serving = health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        };
        Ok(Response::new(health::HealthListResponse {
            statuses: [(String::new(), serving)].into(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

#[tokio::test]
async fn permission_denied_details_survive_a_grpc_round_trip() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(health::health_server::HealthServer::new(DenyingHealth))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );

    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = health::health_client::HealthClient::new(channel);

    // The server routes the standard path to our implementation.
    let list = client.list(health::HealthListRequest {}).await.unwrap().into_inner();
    assert_eq!(
        list.statuses[""].status,
        health::health_check_response::ServingStatus::Serving as i32
    );

    let err =
        client.check(health::HealthCheckRequest { service: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "agent \"spiffe://example.org/spire/agent/x\" is banned");
    assert!(!err.details().is_empty(), "grpc-status-details-bin reached the client");
    assert_eq!(permission_denied_reason(&err), Some(Reason::AgentBanned));

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

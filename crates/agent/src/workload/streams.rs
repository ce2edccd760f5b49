//! The Workload API's server-streaming methods answered with ward's own gRPC response body.
//!
//! tonic's response body encodes each message into one buffer that it keeps for the whole
//! life of the stream: the frame it hands to HTTP/2 is a view of that buffer, so the buffer's
//! allocation, grown to the largest message the stream has sent (up to twice its size), stays
//! with the stream after the frame is written. A `FetchX509SVID` stream of a workload with 100
//! SVIDs (about 125 KB per answer) held about 190 KB that way while it waited for the next
//! rotation. Here each message is encoded into a buffer of exactly its size
//! (`5 + encoded length` bytes: the gRPC length-prefixed message of the HTTP/2 protocol
//! description), handed to HTTP/2 and freed once written, so a waiting stream holds only its
//! own state.
//!
//! [`WorkloadApiService`] serves `FetchX509SVID`, `FetchX509Bundles` and `FetchJWTBundles`
//! this way and hands every other method to tonic's generated server. The answers are the
//! same on the wire: the same headers (`content-type: application/grpc`), one data frame
//! per message, and `grpc-status` (with `grpc-message` and details) in the trailers, or a
//! trailers-only response when the call fails before its first message.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::StreamBody;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::error;
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};

use super::WorkloadApi;

/// The largest request message decoded (tonic's default, 4 MiB); the streaming methods'
/// requests are empty.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The length of a gRPC message prefix: a compressed flag byte and a 4-byte big-endian length.
const PREFIX_LEN: usize = 5;

/// The `SpiffeWorkloadAPI` service: the streaming methods as described in the module
/// documentation, every other method through tonic's generated server.
#[derive(Debug, Clone)]
pub struct WorkloadApiService {
    api: WorkloadApi,
    generated: SpiffeWorkloadApiServer<WorkloadApi>,
}

impl WorkloadApiService {
    pub(super) fn new(api: WorkloadApi) -> Self {
        let generated = SpiffeWorkloadApiServer::new(api.clone());
        Self { api, generated }
    }
}

impl NamedService for WorkloadApiService {
    const NAME: &'static str = <SpiffeWorkloadApiServer<WorkloadApi> as NamedService>::NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for WorkloadApiService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        match request.uri().path() {
            "/SpiffeWorkloadAPI/FetchX509SVID" => Box::pin(async move {
                Ok(serve_stream(request, |r: Request<pb::X509svidRequest>| async move {
                    api.fetch_x509svid(r).await
                })
                .await)
            }),
            "/SpiffeWorkloadAPI/FetchX509Bundles" => Box::pin(async move {
                Ok(serve_stream(request, |r: Request<pb::X509BundlesRequest>| async move {
                    api.fetch_x509_bundles(r).await
                })
                .await)
            }),
            "/SpiffeWorkloadAPI/FetchJWTBundles" => Box::pin(async move {
                Ok(serve_stream(request, |r: Request<pb::JwtBundlesRequest>| async move {
                    api.fetch_jwt_bundles(r).await
                })
                .await)
            }),
            _ => tower::Service::call(&mut self.generated, request),
        }
    }
}

/// Decodes the request, runs `call` and answers with its stream of messages, or with its
/// status as a trailers-only response.
async fn serve_stream<Q, M, S, F, Fut>(
    request: http::Request<Body>,
    call: F,
) -> http::Response<Body>
where
    Q: prost::Message + Default + Send + 'static,
    M: prost::Message + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Send + 'static,
    F: FnOnce(Request<Q>) -> Fut,
    Fut: Future<Output = Result<Response<S>, Status>>,
{
    let request = match decode_request::<Q>(request).await {
        Ok(request) => request,
        Err(status) => return status.into_http(),
    };
    match call(request).await {
        Ok(response) => stream_response(response),
        Err(status) => status.into_http(),
    }
}

/// The request's one message, with the request's headers as metadata and its extensions (the
/// connection's [`super::PeerInfo`]), read to the end of the request body as tonic does.
async fn decode_request<Q>(request: http::Request<Body>) -> Result<Request<Q>, Status>
where
    Q: prost::Message + Default + Send + 'static,
{
    let (mut parts, body) = request.into_parts();
    let mut codec = tonic_prost::ProstCodec::<Q, Q>::default();
    let mut messages = Streaming::new_request(codec.decoder(), body, None, Some(MAX_REQUEST_BYTES));
    let message =
        messages.message().await?.ok_or_else(|| Status::internal("Missing request message."))?;
    let trailers = messages.trailers().await?;
    if let Some(trailers) = trailers {
        parts.headers.extend(trailers.into_headers());
    }
    Ok(Request::from_http(http::Request::from_parts(parts, message)))
}

/// The HTTP response for a stream of messages: its metadata as headers, one exactly sized data
/// frame per message, and the status that ended the stream (OK when it ran out) as trailers.
fn stream_response<M, S>(response: Response<S>) -> http::Response<Body>
where
    M: prost::Message + Send + 'static,
    S: Stream<Item = Result<M, Status>> + Send + 'static,
{
    // The handlers set no response extensions; tonic's own ones are for its clients.
    let (metadata, messages, _extensions) = response.into_parts();
    let frames = async_stream::stream! {
        let mut messages = Box::pin(messages);
        let status = loop {
            match messages.next().await {
                Some(Ok(message)) => match encode_message(&message) {
                    Ok(frame) => yield Ok::<_, Status>(Frame::data(frame)),
                    Err(status) => break status,
                },
                Some(Err(status)) => break status,
                None => break Status::ok(""),
            }
        };
        yield Ok(Frame::trailers(status_trailers(&status)));
    };
    let mut http = http::Response::new(Body::new(StreamBody::new(frames)));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    http
}

/// `message` as a gRPC length-prefixed message (not compressed) in a buffer of exactly its size.
fn encode_message<M: prost::Message>(message: &M) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        error!(len, "workload api message too large to send");
        Status::resource_exhausted(format!("message of {len} bytes is too large to send"))
    })?;
    let mut buf = Vec::with_capacity(len.saturating_add(PREFIX_LEN));
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("could not encode message: {e}")))?;
    Ok(Bytes::from(buf))
}

/// The trailers for `status`: `grpc-status`, and `grpc-message` and details when it has them.
/// A status whose metadata cannot be written as headers ends the stream as `Internal`.
fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if let Err(e) = status.add_header(&mut trailers) {
        error!(error = %e, "could not write a stream's status as trailers");
        trailers.clear();
        trailers.insert(Status::GRPC_STATUS, HeaderValue::from(tonic::Code::Internal as i32));
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_prefixed_with_its_length_and_its_buffer_is_exactly_its_size() {
        let message = pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: "spiffe://example.org/w".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let frame = encode_message(&message).unwrap();
        let len = prost::Message::encoded_len(&message);
        assert_eq!(frame.len(), PREFIX_LEN + len);
        assert_eq!(frame[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize, len);
        let decoded =
            <pb::X509svidResponse as prost::Message>::decode(&frame[PREFIX_LEN..]).unwrap();
        assert_eq!(decoded, message);
    }

    #[test]
    fn the_trailers_carry_the_status_code_and_message() {
        let trailers = status_trailers(&Status::permission_denied("no identity issued"));
        assert_eq!(trailers.get("grpc-status").unwrap(), "7");
        let read = Status::from_header_map(&trailers).unwrap();
        assert_eq!(read.code(), tonic::Code::PermissionDenied);
        assert_eq!(read.message(), "no identity issued");
        let ok = status_trailers(&Status::ok(""));
        assert_eq!(ok.get("grpc-status").unwrap(), "0");
        assert!(ok.get("grpc-message").is_none());
    }
}

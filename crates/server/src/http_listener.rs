//! A small plain-HTTP/1.1 listener for the operator endpoints (Prometheus metrics, health
//! checks): every request is answered by one async function, each connection serves a single
//! request, and the listener stops accepting when the server stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a handler answers: status, content type, body.
pub type Answer = (http::StatusCode, &'static str, String);

/// Binds `host:port` as SPIRE does: `host` may be a name (`localhost`) or an IP address,
/// with or without brackets around an IPv6 address; port 0 picks a free port.
///
/// # Errors
/// When the name does not resolve or nothing can be bound.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))
}

/// Serves `handler` on `listener` until `stop` turns true. `name` labels log records.
pub fn serve<F>(
    name: &'static str,
    listener: TcpListener,
    handler: F,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    F: Fn(http::request::Parts) -> BoxFuture<'static, Answer> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                        continue;
                    }
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::spawn(serve_connection(name, stream, peer, handler.clone()));
        }
    })
}

async fn serve_connection<F>(
    name: &'static str,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handler: Arc<F>,
) where
    F: Fn(http::request::Parts) -> BoxFuture<'static, Answer> + Send + Sync + 'static,
{
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (parts, _body) = req.into_parts();
        let answer = handler(parts);
        async move {
            let (status, content_type, body) = answer.await;
            let mut resp = http::Response::new(body);
            *resp.status_mut() = status;
            let value = http::HeaderValue::from_static(content_type);
            resp.headers_mut().insert(http::header::CONTENT_TYPE, value);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(listener = name, peer = %peer, error = %e, "HTTP connection ended with an error");
    }
}

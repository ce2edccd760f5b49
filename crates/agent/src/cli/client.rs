//! A Workload API client for the command line: where the endpoint is (`-socketPath`, else
//! `SPIFFE_ENDPOINT_SOCKET`, else spire-agent's default socket), the connection, the
//! `workload.spiffe.io: true` header on every call, a per-call deadline, and errors written as
//! grpc-go writes them, so `ward-agent api` fails with the text `spire-agent api` prints.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use super::go_text;

/// The environment variable the SPIFFE Workload Endpoint standard names for the endpoint.
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Where the Workload API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket at an absolute, cleaned path.
    Unix(PathBuf),
    /// A TCP address (only through `SPIFFE_ENDPOINT_SOCKET=tcp://ip:port`).
    Tcp(SocketAddr),
}

impl Endpoint {
    /// The endpoint for `-socketPath` when given, else for `SPIFFE_ENDPOINT_SOCKET` when set,
    /// else spire-agent's default socket path.
    ///
    /// # Errors
    /// The reason `SPIFFE_ENDPOINT_SOCKET` is not a usable address (go-spiffe's texts), or
    /// when a relative path cannot be made absolute.
    pub fn resolve(socket_path: Option<&str>, env_socket: Option<&str>) -> Result<Self, String> {
        match (socket_path, env_socket) {
            (Some(path), _) => Self::from_path(path),
            (None, Some(addr)) => Self::from_address(addr),
            (None, None) => Self::from_path(crate::config::DEFAULT_SOCKET_PATH),
        }
    }

    /// A socket path made absolute against the working directory and cleaned, as
    /// spire-agent's `filepath.Abs` does.
    fn from_path(path: &str) -> Result<Self, String> {
        if path.starts_with('/') {
            return Ok(Self::Unix(go_text::clean(path).into()));
        }
        let cwd = std::env::current_dir()
            .map_err(|e| format!("failed to get absolute path for socket path: {e}"))?;
        let joined = go_text::join(&cwd.to_string_lossy(), path);
        Ok(Self::Unix(joined.into()))
    }

    /// A `SPIFFE_ENDPOINT_SOCKET` value: `unix:///path`, `unix:/path` or `tcp://ip:port`,
    /// checked by go-spiffe's rules and with its error texts.
    fn from_address(addr: &str) -> Result<Self, String> {
        let url = url::Url::parse(addr)
            .map_err(|e| format!("workload endpoint socket is not a valid URI: {e}"))?;
        let kind = match url.scheme() {
            "unix" => "unix",
            "tcp" => "tcp",
            _ => {
                return Err(
                    "workload endpoint socket URI must have a \"tcp\" or \"unix\" scheme".into()
                );
            }
        };
        let problem = if url.cannot_be_a_base() {
            Some("must not be opaque")
        } else if !url.username().is_empty() || url.password().is_some() {
            Some("must not include user info")
        } else if url.query().is_some() {
            Some("must not include query values")
        } else if url.fragment().is_some() {
            Some("must not include a fragment")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("workload endpoint {kind} socket URI {problem}"));
        }
        if kind == "unix" {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err("workload endpoint unix socket URI must not include a host".into());
            }
            if url.path().is_empty() || url.path() == "/" {
                return Err("workload endpoint unix socket URI must include a path".into());
            }
            return Ok(Self::Unix(go_text::clean(url.path()).into()));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("workload endpoint tcp socket URI must include a host".into());
        };
        if !url.path().is_empty() && url.path() != "/" {
            return Err("workload endpoint tcp socket URI must not include a path".into());
        }
        let ip: std::net::IpAddr =
            host.trim_start_matches('[').trim_end_matches(']').parse().map_err(
                |_| "workload endpoint tcp socket URI host component must be an IP:port",
            )?;
        let Some(port) = url.port() else {
            return Err(
                "workload endpoint tcp socket URI host component must include a port".into()
            );
        };
        Ok(Self::Tcp(SocketAddr::new(ip, port)))
    }

    /// How grpc-go names the dial in its error text (`dial unix /path`).
    fn dial(&self) -> String {
        match self {
            Self::Unix(path) => format!("dial unix {}", path.display()),
            Self::Tcp(addr) => format!("dial tcp {addr}"),
        }
    }
}

/// Why a Workload API call failed, displayed as grpc-go's `error.Error()`.
#[derive(Debug)]
pub enum CallError {
    /// The endpoint could not be reached.
    Connect {
        /// `dial unix /path` or `dial tcp ip:port`.
        dial: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    Status(tonic::Status),
    /// The call's deadline (`-timeout`) passed.
    DeadlineExceeded,
    /// The stream ended before its first message.
    Eof,
}

impl CallError {
    /// The gRPC code the failure carries (`Unavailable` when the endpoint is unreachable).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Connect { .. } => tonic::Code::Unavailable,
            Self::Status(s) => s.code(),
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Eof => tonic::Code::Unknown,
        }
    }

    /// Whether the endpoint was not reached at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { dial, source } => {
                let desc = format!(
                    "connection error: desc = \"transport: Error while dialing: {dial}: connect: {}\"",
                    go_text::os_error(source)
                );
                f.write_str(&go_text::status_error(tonic::Code::Unavailable, &desc))
            }
            Self::Status(s) => f.write_str(&go_text::status_error(s.code(), s.message())),
            Self::DeadlineExceeded => f.write_str(&go_text::status_error(
                tonic::Code::DeadlineExceeded,
                "context deadline exceeded",
            )),
            Self::Eof => f.write_str("EOF"),
        }
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        Self::Status(s)
    }
}

/// Adds the Workload API's security header to every request.
#[derive(Debug, Clone, Copy)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("workload.spiffe.io", MetadataValue::from_static("true"));
        Ok(req)
    }
}

/// The generated Workload API client behind the security header.
pub type ApiClient = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// Connects to `endpoint`.
///
/// # Errors
/// [`CallError::Connect`] with the operating system's reason.
pub async fn connect(endpoint: &Endpoint) -> Result<ApiClient, CallError> {
    let connect_error = |e: tonic::transport::Error| CallError::Connect {
        dial: endpoint.dial(),
        source: io_source(&e).unwrap_or_else(|| std::io::Error::other(e.to_string())),
    };
    let channel = match endpoint {
        Endpoint::Unix(path) => {
            let path = path.clone();
            TonicEndpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(connect_error)?
        }
        Endpoint::Tcp(addr) => {
            let addr = *addr;
            TonicEndpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }))
                .await
                .map_err(connect_error)?
        }
    };
    Ok(SpiffeWorkloadApiClient::with_interceptor(channel, SecurityHeader))
}

/// The I/O error at the root of a transport error, if there is one.
fn io_source(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            });
        }
        cur = err.source();
    }
    None
}

/// Runs `call` (connecting included) under `timeout`, as spire-agent's per-call context
/// deadline does; `None` waits without limit.
///
/// # Errors
/// The call's own error, or [`CallError::DeadlineExceeded`].
pub async fn with_deadline<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, call).await.unwrap_or(Err(CallError::DeadlineExceeded)),
        None => call.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_then_the_default() {
        assert_eq!(
            Endpoint::resolve(Some("/a/b.sock"), Some("unix:///c.sock")),
            Ok(Endpoint::Unix("/a/b.sock".into()))
        );
        assert_eq!(
            Endpoint::resolve(None, Some("unix:///c/d.sock")),
            Ok(Endpoint::Unix("/c/d.sock".into()))
        );
        assert_eq!(
            Endpoint::resolve(None, Some("unix:/e.sock")),
            Ok(Endpoint::Unix("/e.sock".into()))
        );
        assert_eq!(
            Endpoint::resolve(None, None),
            Ok(Endpoint::Unix("/tmp/spire-agent/public/api.sock".into()))
        );
        assert_eq!(
            Endpoint::resolve(None, Some("tcp://127.0.0.1:8001")),
            Ok(Endpoint::Tcp("127.0.0.1:8001".parse().unwrap()))
        );
    }

    #[test]
    fn bad_endpoint_addresses_get_go_spiffe_texts() {
        let cases = [
            ("http://x", "workload endpoint socket URI must have a \"tcp\" or \"unix\" scheme"),
            ("unix:relative", "workload endpoint unix socket URI must not be opaque"),
            ("unix:///a?x=1", "workload endpoint unix socket URI must not include query values"),
            ("unix:///a#f", "workload endpoint unix socket URI must not include a fragment"),
            (
                "tcp://example.org:1",
                "workload endpoint tcp socket URI host component must be an IP:port",
            ),
            (
                "tcp://127.0.0.1",
                "workload endpoint tcp socket URI host component must include a port",
            ),
            ("tcp://127.0.0.1:1/p", "workload endpoint tcp socket URI must not include a path"),
        ];
        for (addr, want) in cases {
            assert_eq!(Endpoint::resolve(None, Some(addr)), Err(want.to_owned()), "{addr}");
        }
    }

    #[tokio::test]
    async fn an_absent_socket_fails_as_grpc_go_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = connect(&Endpoint::Unix(path.clone())).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "rpc error: code = Unavailable desc = connection error: desc = \"transport: \
                 Error while dialing: dial unix {}: connect: no such file or directory\"",
                path.display()
            )
        );
    }
}

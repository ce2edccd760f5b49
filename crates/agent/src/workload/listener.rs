//! The Workload API socket: its directory, its alternate names, and the accept loop that
//! records each connection's caller.

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tracing::{info, warn};
use ward_attest::{Caller, ProcFs};

use super::PeerInfo;
use super::authority::AuthorityFix;

/// The names SPIRE's Helm chart and the SPIFFE CSI driver look for in the socket's directory;
/// each one that differs from the socket's own name is made a symbolic link to it.
pub const ALTERNATE_SOCKET_NAMES: [&str; 3] = ["socket", "spire-agent.sock", "api.sock"];

/// Where and how the Workload API socket is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The socket's path. Its directory is created (mode 0755) if missing; a stale socket
    /// (any file) at the path is removed first, and the socket is made mode 0777, as SPIRE
    /// does: who may call is decided by attestation, not by file permissions.
    pub socket_path: PathBuf,
    /// Also create [`ALTERNATE_SOCKET_NAMES`] as relative symbolic links beside the socket
    /// (default `true`), so a directory mounted into pods answers to every name clients use.
    pub alternate_names: bool,
}

impl ListenerConfig {
    /// A socket at `socket_path` with the alternate names.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self { socket_path: socket_path.into(), alternate_names: true }
    }
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The socket path has no file name or no directory.
    #[error("workload api socket path {0} names no file in a directory")]
    InvalidPath(PathBuf),
    /// The socket's directory could not be created.
    #[error("create workload api socket directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A stale file at the socket path could not be removed.
    #[error("remove stale workload api socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("create UDS listener: {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The socket's mode could not be set.
    #[error("unable to change UDS permissions: {path}: {source}")]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// An alternate name could not be linked.
    #[error("link alternate workload api socket name {path}: {source}")]
    Link {
        /// The link's path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// The bound Workload API socket.
#[derive(Debug)]
pub struct WorkloadListener {
    listener: UnixListener,
    socket_path: PathBuf,
    procfs: ProcFs,
}

impl WorkloadListener {
    /// Creates the socket's directory, removes a stale socket, binds, sets mode 0777 and
    /// links the alternate names. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// A [`ListenError`] naming the step that failed. A file other than a socket or a link
    /// in an alternate name's place is left alone (logged), not an error.
    pub fn bind(config: &ListenerConfig) -> Result<Self, ListenError> {
        let path = config.socket_path.clone();
        let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
            return Err(ListenError::InvalidPath(path));
        };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| ListenError::CreateDir { path: dir.to_owned(), source })?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ListenError::RemoveStale { path, source }),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|source| ListenError::Bind { path: path.clone(), source })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .map_err(|source| ListenError::Chmod { path: path.clone(), source })?;
        if config.alternate_names {
            for name in ALTERNATE_SOCKET_NAMES {
                if file_name != name {
                    link_alternate(&dir.join(name), Path::new(file_name))?;
                }
            }
        }
        Ok(Self { listener, socket_path: path, procfs: ProcFs::default() })
    }

    /// Reads callers' processes from `procfs` instead of `/proc`.
    pub fn with_procfs(mut self, procfs: ProcFs) -> Self {
        self.procfs = procfs;
        self
    }

    /// The socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Serves `routes` (the Workload API, and Envoy SDS or others beside it) until
    /// `shutdown` completes. Each accepted connection's caller is recorded as a
    /// [`PeerInfo`] request extension; a connection whose caller cannot be recorded (no
    /// pid, or the process already exited) is closed at once, as SPIRE's peer tracker does.
    ///
    /// # Errors
    /// The gRPC server's error.
    pub async fn serve(
        self,
        routes: Routes,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        info!(path = %self.socket_path.display(), "starting workload api");
        let Self { listener, procfs, .. } = self;
        let incoming = async_stream::stream! {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => match PeerConn::new(stream, &procfs) {
                        Ok(conn) => yield Ok::<_, io::Error>(conn),
                        Err(e) => warn!(error = %e, "connection failed during accept"),
                    },
                    Err(e) => {
                        // Out of descriptors and the like: give the process a moment.
                        warn!(error = %e, "workload api accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        };
        Server::builder().add_routes(routes).serve_with_incoming_shutdown(incoming, shutdown).await
    }
}

/// Makes `link` a symbolic link to `target` (a name in the same directory), replacing a
/// stale link or socket there.
fn link_alternate(link: &Path, target: &Path) -> Result<(), ListenError> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() || meta.file_type().is_socket() => {
            std::fs::remove_file(link)
                .map_err(|source| ListenError::Link { path: link.to_owned(), source })?;
        }
        Ok(_) => {
            warn!(path = %link.display(), "not linking alternate socket name over an existing file");
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(ListenError::Link { path: link.to_owned(), source }),
    }
    std::os::unix::fs::symlink(target, link)
        .map_err(|source| ListenError::Link { path: link.to_owned(), source })
}

/// An accepted connection with its caller.
struct PeerConn {
    /// The socket, with every request's `:authority` made acceptable to the HTTP/2 server.
    stream: AuthorityFix<UnixStream>,
    peer: PeerInfo,
}

impl PeerConn {
    fn new(stream: UnixStream, procfs: &ProcFs) -> Result<Self, ward_attest::AttestError> {
        let cred = stream.peer_cred().map_err(|_| ward_attest::AttestError::NoCallerPid)?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
        let caller = Caller { pid, uid: cred.uid(), gid: cred.gid() };
        Ok(Self { stream: AuthorityFix::new(stream), peer: PeerInfo::open(procfs, caller)? })
    }
}

impl Connected for PeerConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

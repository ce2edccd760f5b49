//! The admin socket's stream as the CLI's gRPC client uses it, watched so that a connection
//! the server closes or resets reads as Go's gRPC client reports it.
//!
//! tonic reports such a failure as `Unknown: transport error` or `Canceled: operation was
//! canceled`; spire-server's CLI prints `Unavailable` with the transport's reason, for example
//! `connection error: desc = "error reading server preface: EOF"` when the socket accepts and
//! closes without answering. The stream notes the first failure it meets (end of stream, or
//! an I/O error while reading or writing) and whether the server had sent anything before,
//! and words it as grpc-go's HTTP/2 transport does.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// Where the first transport failure of a connection is written, as the text Go's gRPC puts
/// after `connection error: desc = `.
pub(super) type FailureSlot = Arc<Mutex<Option<String>>>;

/// Notes `text` as the connection's failure unless one is noted already.
pub(super) fn note(slot: &FailureSlot, text: String) {
    if let Ok(mut s) = slot.lock()
        && s.is_none()
    {
        *s = Some(text);
    }
}

/// A Unix stream to the admin socket that notes how it failed.
pub(super) struct WatchedStream {
    inner: UnixStream,
    path: PathBuf,
    /// Whether the server has sent any byte (its HTTP/2 preface comes first).
    heard: bool,
    slot: FailureSlot,
}

impl WatchedStream {
    pub(super) fn new(inner: UnixStream, path: &Path, slot: FailureSlot) -> Self {
        Self { inner, path: path.to_owned(), heard: false, slot }
    }

    /// What grpc-go says when reading fails: before the server's preface, `error reading
    /// server preface: <why>`; after it, `error reading from server: <why>`.
    fn read_failed(&self, why: &str) {
        let phase =
            if self.heard { "error reading from server" } else { "error reading server preface" };
        note(&self.slot, format!("{phase}: {why}"));
    }

    /// Go's text of an I/O error on the socket: `<op> unix @-><path>: <op>: <reason>`.
    fn op_error(&self, op: &str, e: &std::io::Error) -> String {
        format!("{op} unix @->{}: {op}: {}", self.path.display(), super::os_error_text(e))
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.heard = true,
            Poll::Ready(Ok(())) if wanted => self.read_failed("EOF"),
            Poll::Ready(Err(e)) => {
                let why = self.op_error("read", e);
                self.read_failed(&why);
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &polled {
            let why = self.op_error("write", e);
            let text = if self.heard {
                format!("error writing to server: {why}")
            } else {
                format!("transport: failed to write client preface: {why}")
            };
            note(&self.slot, text);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

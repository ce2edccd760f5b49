//! Learning how a gRPC call ended from its HTTP response: the status is in the headers of a
//! trailers-only response, otherwise in the trailers after the last message. A body dropped
//! before its trailers (the client went away) ends the call as `Cancelled`. On request, the
//! response messages seen on the way are handed over too (the gRPC-framed bytes, capped).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// What runs once with the call's final status and the response bytes kept (empty unless
/// asked for).
pub type Done = Box<dyn FnOnce(&Status, &[u8]) + Send>;

/// At most this many response bytes are kept (gRPC's default message size limit plus the
/// frame header).
pub const KEEP_LIMIT: usize = 4 * 1024 * 1024 + 5;

/// Returns `resp` with `done` hooked to the end of the call; with `keep`, the response body
/// bytes (up to [`KEEP_LIMIT`]) are passed to `done`.
pub fn on_complete(resp: http::Response<Body>, keep: bool, done: Done) -> http::Response<Body> {
    if let Some(status) = Status::from_header_map(resp.headers()) {
        done(&status, &[]);
        return resp;
    }
    let mut completion = Completion { kept: keep.then(Vec::new), done: Some(done) };
    resp.map(|inner| Body::new(Inspect::new(inner, move |frame: Seen<'_>| completion.see(frame))))
}

/// Appends `data` to `kept`, up to [`KEEP_LIMIT`] bytes in all.
pub fn keep(kept: &mut Vec<u8>, data: &[u8]) {
    let room = KEEP_LIMIT.saturating_sub(kept.len());
    kept.extend_from_slice(data.get(..data.len().min(room)).unwrap_or_default());
}

/// A frame as a body yields it (`None` at the end).
pub type Seen<'a> = Option<&'a Result<Frame<Bytes>, Status>>;

/// A body that shows every frame to a function on its way through.
pub struct Inspect<F> {
    inner: Body,
    see: F,
}

impl<F: FnMut(Seen<'_>)> Inspect<F> {
    /// `inner`, with `see` called on each frame it yields.
    pub fn new(inner: Body, see: F) -> Self {
        Self { inner, see }
    }
}

impl<F> http_body::Body for Inspect<F>
where
    F: FnMut(Seen<'_>) + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        (this.see)(frame.as_ref());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Watches a response's frames for the final status; dropped unfinished, the call ends as
/// `Cancelled`.
struct Completion {
    kept: Option<Vec<u8>>,
    done: Option<Done>,
}

impl Completion {
    fn see(&mut self, frame: Seen<'_>) {
        match frame {
            Some(Ok(f)) => {
                if let (Some(kept), Some(data)) = (self.kept.as_mut(), f.data_ref()) {
                    keep(kept, data);
                }
                if let Some(trailers) = f.trailers_ref() {
                    let status = Status::from_header_map(trailers)
                        .unwrap_or_else(|| Status::unknown("no grpc-status in the trailers"));
                    self.finish(&status);
                }
            }
            Some(Err(e)) => self.finish(e),
            None => self.finish(&Status::unknown("the response ended without a status")),
        }
    }

    fn finish(&mut self, status: &Status) {
        if let Some(done) = self.done.take() {
            done(status, self.kept.as_deref().unwrap_or_default());
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(&Status::cancelled("the client ended the call"));
    }
}

//! Copying a request's body as the handler reads it, and reading a gRPC-framed message.

use std::sync::{Arc, Mutex};

use tonic::body::Body;

use super::Tapped;
use crate::telemetry::{Inspect, Seen, keep};

/// Wraps `req`'s body so the bytes the handler reads (up to `KEEP_LIMIT`) are copied into
/// the returned buffer.
pub(super) fn tap_request(req: http::Request<Body>) -> (http::Request<Body>, Tapped) {
    let copy: Tapped = Arc::new(Mutex::new(Vec::new()));
    let shared = copy.clone();
    let req = req.map(|inner| {
        Body::new(Inspect::new(inner, move |frame: Seen<'_>| {
            if let Some(Ok(f)) = frame
                && let Some(data) = f.data_ref()
            {
                match shared.lock() {
                    Ok(mut g) => keep(&mut g, data),
                    Err(p) => keep(&mut p.into_inner(), data),
                }
            }
        }))
    });
    (req, copy)
}

/// The bytes copied so far.
pub(super) fn taken(t: &Tapped) -> Vec<u8> {
    match t.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// The first message of gRPC-framed bytes (an uncompressed frame only).
pub(super) fn unframe(framed: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = framed.split_first()?;
    let len = rest.get(..4)?;
    let len = usize::try_from(u32::from_be_bytes([len[0], len[1], len[2], len[3]])).ok()?;
    if compressed != 0 {
        return None;
    }
    rest.get(4..4usize.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframes_one_message() {
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 7, 8, 9]), Some(&[7u8, 8][..]));
        assert_eq!(unframe(&[0, 0, 0, 0, 3, 7]), None);
        assert_eq!(unframe(&[1, 0, 0, 0, 1, 7]), None);
        assert_eq!(unframe(&[0, 0]), None);
        assert_eq!(unframe(&[0, 0, 0, 0, 0]), Some(&[][..]));
    }
}

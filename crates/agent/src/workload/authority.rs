//! Requests whose `:authority` is not a URI authority, accepted on the Workload API socket as
//! spire-agent accepts them.
//!
//! gRPC clients on a Unix socket fill in `:authority` as they please: grpc-go (go-spiffe)
//! sends `localhost`, but gRPC's C core (Python's `grpcio`, under py-spiffe) and grpc-java
//! send the socket's path. The HTTP/2 server under tonic resets every stream whose
//! `:authority` does not parse (RST_STREAM PROTOCOL_ERROR) before any service sees it, while
//! Go's gRPC server, which spire-agent runs, takes any value. Nothing on this socket reads
//! the authority, so [`AuthorityFix`] sits between the socket and the HTTP/2 server: it
//! decodes every header block the client sends (HEADERS and CONTINUATION frames, HPACK with
//! the client's dynamic table), replaces an `:authority` that does not parse with
//! `localhost`, and encodes the block again for the server with a table of its own, so both
//! HPACK contexts stay consistent. The connection preface and every other frame pass through
//! byte for byte; nothing the server writes is touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface's length (`PRI * HTTP/2.0…`).
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header's length.
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Stream dependency and weight of a HEADERS frame with PRIORITY.
const PRIORITY_LEN: usize = 5;
/// The largest header block (HEADERS and its CONTINUATIONs) a client may send; a larger one
/// closes the connection.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The largest frame payload written to the server: HTTP/2's initial
/// SETTINGS_MAX_FRAME_SIZE, which the Workload API server keeps.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The HPACK dynamic table size the Workload API server allows (HTTP/2's initial
/// SETTINGS_HEADER_TABLE_SIZE, which it keeps): a client may not grow the table beyond it.
const MAX_TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` that does not parse.
const LOCALHOST: &[u8] = b"localhost";
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A connection whose client-to-server bytes have every unparsable `:authority` replaced
/// (see the module docs); writes go straight to the inner connection.
pub(crate) struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    chunk: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps the server side of a freshly accepted HTTP/2 connection.
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, rewriter: Rewriter::new(), chunk: vec![0; READ_CHUNK].into(), eof: false }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.rewriter.output(buf.remaining());
            if !ready.is_empty() {
                buf.put_slice(ready);
                let n = ready.len();
                this.rewriter.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
            } else {
                this.rewriter.push(chunk.filled())?;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// The byte-level rewriting, without I/O: client bytes in with [`Rewriter::push`], bytes for
/// the server out with [`Rewriter::output`] and [`Rewriter::consume`].
struct Rewriter {
    /// Client bytes not yet handled (an incomplete frame header or header frame).
    input: Vec<u8>,
    /// Bytes ready for the server, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes of the connection preface still to pass through.
    preface_left: usize,
    /// Payload bytes of the current frame (not a header frame) still to pass through.
    passthrough: usize,
    block: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http/2 from workload: {what}"))
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Self {
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            preface_left: PREFACE_LEN,
            passthrough: 0,
            block: None,
            decoder,
            encoder: Encoder::new(),
        }
    }

    /// Up to `max` bytes ready for the server.
    fn output(&self, max: usize) -> &[u8] {
        let ready = self.out.get(self.out_pos..).unwrap_or_default();
        &ready[..ready.len().min(max)]
    }

    /// Marks `n` bytes of [`Rewriter::output`] as handed to the server.
    fn consume(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Takes bytes from the client and rewrites what is complete.
    ///
    /// # Errors
    /// `InvalidData` for what the HTTP/2 server would refuse anyway: a header block that
    /// does not decode, is too large, or is interrupted by another frame, or a HEADERS
    /// frame whose padding or priority does not fit.
    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let result = self.process(&mut at);
        self.input.drain(..at);
        result
    }

    fn process(&mut self, at: &mut usize) -> io::Result<()> {
        loop {
            let available = self.input.len() - *at;
            let copy =
                if self.preface_left > 0 { &mut self.preface_left } else { &mut self.passthrough };
            if *copy > 0 {
                let n = (*copy).min(available);
                *copy -= n;
                self.out.extend_from_slice(&self.input[*at..*at + n]);
                *at += n;
                if n == available {
                    return Ok(());
                }
                continue;
            }
            let Some(header) = self.input.get(*at..*at + FRAME_HEADER_LEN) else {
                return Ok(());
            };
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let stream_id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            if kind != HEADERS && kind != CONTINUATION {
                if self.block.is_some() {
                    return Err(malformed("a frame inside a header block"));
                }
                self.out.extend_from_slice(header);
                *at += FRAME_HEADER_LEN;
                self.passthrough = len;
                continue;
            }
            if len > MAX_HEADER_BLOCK {
                return Err(malformed("header block too large"));
            }
            let Some(payload) =
                self.input.get(*at + FRAME_HEADER_LEN..*at + FRAME_HEADER_LEN + len)
            else {
                return Ok(());
            };
            let payload = payload.to_vec();
            *at += FRAME_HEADER_LEN + len;
            self.header_frame(kind, flags, stream_id, &payload)?;
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let fragment = if kind == HEADERS {
            if self.block.is_some() {
                return Err(malformed("HEADERS inside a header block"));
            }
            let mut rest = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&len, tail) = rest.split_first().ok_or_else(|| malformed("bad padding"))?;
                pad = usize::from(len);
                rest = tail;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (fields, tail) = rest
                    .split_first_chunk::<PRIORITY_LEN>()
                    .ok_or_else(|| malformed("bad priority"))?;
                priority = Some(*fields);
                rest = tail;
            }
            let fragment = rest
                .get(..rest.len().checked_sub(pad).ok_or_else(|| malformed("bad padding"))?)
                .unwrap_or_default();
            self.block = Some(PendingBlock {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: Vec::new(),
            });
            fragment
        } else {
            payload
        };
        let block = match self.block.as_mut() {
            Some(block) if block.stream_id == stream_id => block,
            _ => return Err(malformed("CONTINUATION without its HEADERS")),
        };
        if block.fragment.len() + fragment.len() > MAX_HEADER_BLOCK {
            return Err(malformed("header block too large"));
        }
        block.fragment.extend_from_slice(fragment);
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block)?;
        }
        Ok(())
    }

    /// Decodes a complete header block, fixes `:authority`, and writes it out again as a
    /// HEADERS frame and as many CONTINUATIONs as it needs.
    fn finish(&mut self, block: PendingBlock) -> io::Result<()> {
        let mut headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| malformed(&format!("header block does not decode: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = LOCALHOST.to_vec();
            }
        }
        let encoded =
            self.encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));

        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        let mut prefix: &[u8] = &[];
        if let Some(priority) = &block.priority {
            flags |= PRIORITY;
            prefix = priority;
        }
        let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - prefix.len());
        let (first, mut rest) = encoded.split_at(first_len);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(prefix.len() + first.len(), HEADERS, flags, block.stream_id);
        self.out.extend_from_slice(prefix);
        self.out.extend_from_slice(first);
        while !rest.is_empty() {
            let (part, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(part.len(), CONTINUATION, flags, block.stream_id);
            self.out.extend_from_slice(part);
        }
        Ok(())
    }

    /// Writes a frame header; `len` is at most [`MAX_FRAME_PAYLOAD`].
    fn frame(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
        self.out.extend_from_slice(&len[1..]);
        self.out.push(kind);
        self.out.push(flags);
        self.out.extend_from_slice(&stream_id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SOCKET_PATH: &[u8] = b"/tmp/spire-agent/public/api.sock";

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = len[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream_id.to_be_bytes());
        out.extend(payload);
        out
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"workload.spiffe.io", b"true"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    fn encode(encoder: &mut Encoder<'_>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Feeds `input` to a rewriter `step` bytes at a time and returns everything it output.
    fn rewrite(input: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            rewriter.push(chunk)?;
            let ready = rewriter.output(usize::MAX).to_vec();
            rewriter.consume(ready.len());
            out.extend(ready);
        }
        Ok(out)
    }

    /// Splits server-bound bytes into frames `(kind, flags, stream, payload)`.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let stream = u32::from_be_bytes(rest[5..9].try_into().unwrap());
            frames.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    /// The header blocks of `frames` (HEADERS, with priority and padding removed, joined
    /// with their CONTINUATIONs), decoded by one decoder as the server would.
    fn decoded_blocks(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames {
            match *kind {
                HEADERS => {
                    let skip = if flags & PRIORITY != 0 { PRIORITY_LEN } else { 0 };
                    assert_eq!(flags & PADDED, 0);
                    block = payload[skip..].to_vec();
                }
                CONTINUATION => block.extend(payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                blocks.push(decoder.decode(&block).unwrap());
            }
        }
        blocks
    }

    #[test]
    fn replaces_a_socket_path_authority_and_passes_everything_else_through() {
        let mut client = Encoder::new();
        let settings = frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\x05hello");
        let first = frame(HEADERS, END_HEADERS, 1, &encode(&mut client, &request(SOCKET_PATH)));
        // The second request refers to the first's headers through the client's dynamic table.
        let second = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &encode(&mut client, &request(SOCKET_PATH)),
        );
        let ping = frame(0x6, 0, 0, b"12345678");
        let input = [&PREFACE[..], &settings, &first, &data, &second, &ping].concat();

        for step in [1, 7, input.len()] {
            let out = rewrite(&input, step).unwrap();
            assert_eq!(&out[..PREFACE_LEN], PREFACE);
            let frames = frames(&out[PREFACE_LEN..]);
            let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, END_HEADERS, 1),
                    (0x0, END_STREAM, 1),
                    (HEADERS, END_HEADERS | END_STREAM, 3),
                    (0x6, 0, 0),
                ]
            );
            assert_eq!(frames[0].3, settings[9..]);
            assert_eq!(frames[2].3, data[9..]);
            assert_eq!(frames[4].3, ping[9..]);
            let want = request(b"localhost");
            assert_eq!(decoded_blocks(&frames), [want.clone(), want]);
        }
    }

    #[test]
    fn keeps_an_authority_that_parses() {
        let mut client = Encoder::new();
        let headers = request(b"localhost:8081");
        let input = [&PREFACE[..], &frame(HEADERS, END_HEADERS, 1, &encode(&mut client, &headers))]
            .concat();
        let out = rewrite(&input, input.len()).unwrap();
        assert_eq!(decoded_blocks(&frames(&out[PREFACE_LEN..])), [headers]);
    }

    #[test]
    fn joins_continuations_and_drops_padding_but_keeps_priority() {
        let mut client = Encoder::new();
        let block = encode(&mut client, &request(SOCKET_PATH));
        let (head, tail) = block.split_at(10);
        let mut payload = vec![3];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(head);
        payload.extend([0, 0, 0]);
        let input = [
            &PREFACE[..],
            &frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload),
            &frame(CONTINUATION, END_HEADERS, 5, tail),
        ]
        .concat();
        let out = rewrite(&input, 3).unwrap();
        let frames = frames(&out[PREFACE_LEN..]);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            (frames[0].0, frames[0].1, frames[0].2),
            (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5)
        );
        assert_eq!(frames[0].3[..PRIORITY_LEN], [0, 0, 0, 0, 16]);
        assert_eq!(decoded_blocks(&frames), [request(b"localhost")]);
    }

    #[test]
    fn splits_a_large_block_into_continuations() {
        let mut client = Encoder::new();
        let mut headers = request(SOCKET_PATH);
        headers.push((b"x-large".to_vec(), vec![b'a'; 40_000]));
        let input = [&PREFACE[..], &frame(HEADERS, END_HEADERS, 1, &encode(&mut client, &headers))]
            .concat();
        let out = rewrite(&input, 4096).unwrap();
        let frames = frames(&out[PREFACE_LEN..]);
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(kinds, [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        headers[3].1 = b"localhost".to_vec();
        assert_eq!(decoded_blocks(&frames), [headers]);
    }

    #[test]
    fn refuses_what_the_server_would_refuse_without_panicking() {
        let cases: [(&str, Vec<u8>); 6] = [
            ("continuation alone", frame(CONTINUATION, END_HEADERS, 1, b"\x82")),
            ("garbage hpack", frame(HEADERS, END_HEADERS, 1, &[0xff; 16])),
            // A dynamic table size update to 8192, over what the server allows.
            ("table too large", frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82])),
            ("padding too long", frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82])),
            ("priority cut short", frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0])),
            (
                "frame inside a header block",
                [frame(HEADERS, 0, 1, b"\x82"), frame(0x0, 0, 1, b"x")].concat(),
            ),
        ];
        for (what, bytes) in cases {
            let input = [&PREFACE[..], &bytes].concat();
            let err = rewrite(&input, input.len()).expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}");
        }
        let too_large = [&PREFACE[..], &[0x10, 0, 0, HEADERS, 0, 0, 0, 0, 1]].concat();
        let err = rewrite(&too_large, too_large.len()).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }
}

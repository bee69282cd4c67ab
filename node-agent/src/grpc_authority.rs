//! Accepting kubelet's gRPC connections from before Kubernetes 1.26.
//!
//! Until 1.26, kubelet dials a device plugin by its bare socket path, and the
//! grpc-go it embeds sends that path as the HTTP/2 `:authority`
//! (`/var/lib/kubelet/device-plugins/hami.sock`). h2, under tonic, refuses
//! such an authority as malformed and resets every stream with
//! `PROTOCOL_ERROR`: kubelet then reports zero devices and every GPU pod
//! fails with `OutOf<resource>`. h2 has no switch to relax the check, so each
//! accepted connection goes through [`relay`], which re-encodes every request
//! header block with an unparsable `:authority` replaced by `localhost` and
//! passes every other byte unchanged.
//!
//! Every block is re-encoded, not only the offending ones: the client's HPACK
//! encoder refers to its dynamic table, which only this relay's decoder now
//! tracks, so the blocks tonic sees are written without indexing and stand on
//! their own.

use std::borrow::Cow;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};

/// What a client opens an HTTP/2 connection with (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// The frame size every HTTP/2 peer must accept; the re-encoded block is cut
/// into frames of at most this size whatever the server advertised.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// kubelet's header blocks are a few hundred bytes; this bounds what one
/// connection can make the relay hold.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The HPACK dynamic table a client may ask for; grpc-go uses 4096.
const MAX_HPACK_TABLE: usize = 64 * 1024;
/// What the relay writes in place of an authority h2 would refuse.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading or writing the connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a header block of more than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("a HEADERS frame whose padding or priority exceeds its length")]
    MalformedHeaders,
    #[error("frame type {0:#x} in the middle of a header block")]
    InterruptedHeaderBlock(u8),
    #[error("a CONTINUATION frame with no header block open")]
    StrayContinuation,
    #[error("undecodable header block: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// The connections of `listener`, each relayed through [`relay`]; what tonic
/// serves instead of the raw unix streams.
pub fn incoming(listener: UnixListener) -> impl Stream<Item = std::io::Result<DuplexStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(client, _)| {
            let (served, relayed) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                if let Err(e) = relay(client, relayed).await {
                    tracing::debug!("device plugin connection closed: {e}");
                }
            });
            served
        });
        Some((next, listener))
    })
}

/// Copies `client` to `server` through [`rewrite_requests`] and `server` back
/// to `client` as it is, until either side closes.
pub async fn relay(client: UnixStream, server: DuplexStream) -> Result<(), RelayError> {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let upstream = async {
        let result = rewrite_requests(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
        result
    };
    let downstream = async {
        let result = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
        result.map(drop).map_err(RelayError::from)
    };
    let (up, down) = tokio::join!(upstream, downstream);
    up.and(down)
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: Vec<u8>,
}

/// Reads a client's side of an HTTP/2 connection from `input` and writes it
/// to `output` with every header block re-encoded by [`fix_header_block`].
pub async fn rewrite_requests<R, W>(input: &mut R, output: &mut W) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE_LEN];
    if !read_exact_or_eof(input, &mut preface).await? {
        return Ok(());
    }
    output.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(MAX_HPACK_TABLE);
    let mut open: Option<OpenBlock> = None;
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if !read_exact_or_eof(input, &mut header).await? {
            return Ok(());
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if matches!(kind, TYPE_HEADERS | TYPE_CONTINUATION) && len > MAX_HEADER_BLOCK {
            return Err(RelayError::HeaderBlockTooLarge);
        }
        payload.resize(len, 0);
        input.read_exact(&mut payload).await?;
        match (kind, open.as_mut()) {
            (TYPE_HEADERS, None) => {
                let block = open_block(stream, flags, &payload)?;
                if flags & FLAG_END_HEADERS != 0 {
                    write_block(output, &mut decoder, &block).await?;
                } else {
                    open = Some(block);
                }
            }
            (TYPE_CONTINUATION, Some(block)) if block.stream == stream => {
                if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(RelayError::HeaderBlockTooLarge);
                }
                block.fragment.extend_from_slice(&payload);
                if flags & FLAG_END_HEADERS != 0 {
                    let block = open.take().expect("matched Some");
                    write_block(output, &mut decoder, &block).await?;
                }
            }
            (TYPE_CONTINUATION, None) => return Err(RelayError::StrayContinuation),
            (other, Some(_)) => return Err(RelayError::InterruptedHeaderBlock(other)),
            (_, None) => {
                output.write_all(&header).await?;
                output.write_all(&payload).await?;
            }
        }
    }
}

async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(true)
}

/// The header block fragment of a HEADERS frame, without its padding.
fn open_block(stream: u32, flags: u8, payload: &[u8]) -> Result<OpenBlock, RelayError> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = rest.split_first().ok_or(RelayError::MalformedHeaders)?;
        pad = n as usize;
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        if rest.len() < PRIORITY_LEN {
            return Err(RelayError::MalformedHeaders);
        }
        let (fields, tail) = rest.split_at(PRIORITY_LEN);
        priority = Some(fields.try_into().expect("five bytes"));
        rest = tail;
    }
    let fragment_len = rest
        .len()
        .checked_sub(pad)
        .ok_or(RelayError::MalformedHeaders)?;
    Ok(OpenBlock {
        stream,
        end_stream: flags & FLAG_END_STREAM != 0,
        priority,
        fragment: rest[..fragment_len].to_vec(),
    })
}

async fn write_block<W: AsyncWrite + Unpin>(
    output: &mut W,
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &OpenBlock,
) -> Result<(), RelayError> {
    let encoded = fix_header_block(decoder, &block.fragment)?;
    let mut chunks: Vec<&[u8]> = encoded.chunks(MAX_FRAME_PAYLOAD - PRIORITY_LEN).collect();
    if chunks.is_empty() {
        // An empty block still needs its one HEADERS frame.
        chunks.push(&[]);
    }
    let count = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (first, last) = (i == 0, i + 1 == count);
        let priority = block.priority.as_ref().filter(|_| first);
        let mut flags = if last { FLAG_END_HEADERS } else { 0 };
        if first && block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        let kind = if first {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        let len = chunk.len() + priority.map_or(0, |p| p.len());
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&block.stream.to_be_bytes());
        if let Some(p) = priority {
            frame.extend_from_slice(p);
        }
        frame.extend_from_slice(chunk);
        output.write_all(&frame).await?;
    }
    Ok(())
}

/// Decodes one header block and encodes it again without indexing, with an
/// `:authority` that h2 would refuse replaced by [`REPLACEMENT_AUTHORITY`].
pub fn fix_header_block(
    decoder: &mut loona_hpack::Decoder<'static>,
    fragment: &[u8],
) -> Result<Vec<u8>, RelayError> {
    let mut encoded = Vec::with_capacity(fragment.len() * 2);
    let mut replaced = None;
    decoder
        .decode_with_cb(fragment, |name, value| {
            let value = if name.as_ref() == b":authority" && !is_valid_authority(&value) {
                replaced = Some(String::from_utf8_lossy(&value).into_owned());
                Cow::Borrowed(REPLACEMENT_AUTHORITY)
            } else {
                value
            };
            encode_literal(&mut encoded, &name, &value);
        })
        .map_err(RelayError::Hpack)?;
    if let Some(authority) = replaced {
        tracing::trace!(%authority, "replaced an authority h2 refuses");
    }
    Ok(encoded)
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A literal header field without indexing, new name, no Huffman coding
/// (RFC 7541, 6.2.2).
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        encode_integer(out, string.len(), 7, 0x00);
        out.extend_from_slice(string);
    }
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541, 5.1).
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, high_bits: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        out.push((value % 0x80) as u8 | 0x80);
        value /= 0x80;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        loona_hpack::Decoder::new().decode(bytes).unwrap()
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_stays() {
        let mut client = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/v1beta1.DevicePlugin/Allocate"),
            (b":authority", b"/var/lib/kubelet/device-plugins/hami.sock"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = client.encode(headers.iter().copied());
        let mut decoder = loona_hpack::Decoder::new();
        let fixed = decode_all(&fix_header_block(&mut decoder, &block).unwrap());
        let authority = fixed.iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(authority.1, REPLACEMENT_AUTHORITY);
        let path = fixed.iter().find(|(n, _)| n == b":path").unwrap();
        assert_eq!(path.1, b"/v1beta1.DevicePlugin/Allocate");
        assert_eq!(fixed.len(), headers.len());
        assert_eq!(fixed[0].0, b":method", "pseudo-headers keep their order");
    }

    #[test]
    fn blocks_that_index_the_clients_dynamic_table_come_out_self_contained() {
        // The client's second block is almost all references to entries its
        // first block added: each re-encoded block must decode on its own.
        let mut client = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":authority", b"/var/lib/kubelet/device-plugins/hami.sock"),
            (b"grpc-accept-encoding", b"gzip"),
        ];
        let first = client.encode(headers.iter().copied());
        let second = client.encode(headers.iter().copied());
        assert!(
            second.len() < first.len(),
            "the client indexed its first block"
        );
        let mut decoder = loona_hpack::Decoder::new();
        fix_header_block(&mut decoder, &first).unwrap();
        let fixed = decode_all(&fix_header_block(&mut decoder, &second).unwrap());
        assert_eq!(
            fixed[0],
            (b":authority".to_vec(), REPLACEMENT_AUTHORITY.to_vec())
        );
        assert_eq!(
            fixed[1],
            (b"grpc-accept-encoding".to_vec(), b"gzip".to_vec())
        );
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode([(&b":authority"[..], &b"localhost:50051"[..])]);
        let fixed =
            decode_all(&fix_header_block(&mut loona_hpack::Decoder::new(), &block).unwrap());
        assert_eq!(fixed[0].1, b"localhost:50051");
    }

    #[test]
    fn long_strings_use_multi_byte_integers() {
        let mut out = Vec::new();
        let value = vec![b'a'; 300];
        encode_literal(&mut out, b"x-long", &value);
        assert_eq!(decode_all(&out), vec![(b"x-long".to_vec(), value)]);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Splits `bytes` into (frame header, payload) pairs after the preface.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut rest = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    fn rewrite(input: &[u8]) -> Result<Vec<u8>, RelayError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut output = Vec::new();
        runtime.block_on(rewrite_requests(&mut &input[..], &mut output))?;
        Ok(output)
    }

    #[test]
    fn padded_headers_split_over_continuation_arrive_as_one_block() {
        let mut client = loona_hpack::Encoder::new();
        let block = client.encode([
            (&b":path"[..], &b"/v1beta1.DevicePlugin/ListAndWatch"[..]),
            (b":authority", b"/var/lib/kubelet/device-plugins/hami.sock"),
        ]);
        let (a, b) = block.split_at(block.len() / 2);
        let mut headers = vec![3u8]; // pad length
        headers.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dep 0, weight 15
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0, 0]);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(0x4, 0, 0, b"")); // SETTINGS passes through
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &headers,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        let output = rewrite(&input).unwrap();
        assert_eq!(&output[..PREFACE_LEN], &input[..PREFACE_LEN]);
        let out = frames(&output);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!((out[0].0, out[0].3.len()), (0x4, 0));
        let (kind, flags, stream, payload) = &out[1];
        assert_eq!((*kind, *stream), (TYPE_HEADERS, 1));
        assert_eq!(*flags, FLAG_END_HEADERS | FLAG_END_STREAM | FLAG_PRIORITY);
        assert_eq!(&payload[..PRIORITY_LEN], &[0x80, 0, 0, 0, 15]);
        let fixed = decode_all(&payload[PRIORITY_LEN..]);
        assert_eq!(fixed[1].1, REPLACEMENT_AUTHORITY);
        assert_eq!(out[2], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
    }

    #[test]
    fn a_large_block_is_cut_into_frames_the_server_must_accept() {
        let value = vec![b'v'; 40_000];
        let mut block = Vec::new();
        encode_literal(&mut block, b"x-big", &value);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &block));
        let out = frames(&rewrite(&input).unwrap());
        assert!(out.len() >= 3);
        assert!(out.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        assert_eq!(out[0].0, TYPE_HEADERS);
        assert_eq!(out[0].1, 0, "END_HEADERS only on the last frame");
        assert!(out[1..]
            .iter()
            .all(|f| f.0 == TYPE_CONTINUATION && f.2 == 3));
        assert_eq!(out.last().unwrap().1, FLAG_END_HEADERS);
        let joined: Vec<u8> = out.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(decode_all(&joined), vec![(b"x-big".to_vec(), value)]);
    }

    #[test]
    fn hostile_framing_is_refused() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut stray = preface.clone();
        stray.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b""));
        assert!(matches!(
            rewrite(&stray),
            Err(RelayError::StrayContinuation)
        ));

        let mut interrupted = preface.clone();
        interrupted.extend(frame(TYPE_HEADERS, 0, 1, b""));
        interrupted.extend(frame(0x0, 0, 1, b"x"));
        assert!(matches!(
            rewrite(&interrupted),
            Err(RelayError::InterruptedHeaderBlock(0))
        ));

        let mut bad_pad = preface.clone();
        bad_pad.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        assert!(matches!(
            rewrite(&bad_pad),
            Err(RelayError::MalformedHeaders)
        ));

        let mut huge = preface.clone();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, TYPE_HEADERS, 0, 0, 0, 0, 1]);
        assert!(matches!(
            rewrite(&huge),
            Err(RelayError::HeaderBlockTooLarge)
        ));

        let mut garbage = preface;
        garbage.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff],
        ));
        assert!(matches!(rewrite(&garbage), Err(RelayError::Hpack(_))));
    }

    #[test]
    fn a_connection_closed_between_frames_ends_cleanly() {
        assert!(rewrite(b"").unwrap().is_empty());
        let truncated = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0";
        assert!(matches!(rewrite(truncated), Err(RelayError::Io(_))));
    }
}

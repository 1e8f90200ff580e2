//! Frame protocol v1: the byte layout every client, gateway and backend shares.
//!
//! ```text
//! offset size field
//!  0     4    len          u32 BE, bytes after this field = 28 + payload length
//!  4     1    version      u8 = 1
//!  5     1    kind         u8
//!  6     2    service_type u16 BE
//!  8     4    realm_id     u32 BE
//! 12     8    user_id      u64 BE
//! 20     8    session_id   u64 BE
//! 28     4    seq          u32 BE
//! 32     ..   payload
//! ```
//!
//! The codec is sans-io: [`decode`] consumes whole frames from a `BytesMut`
//! that the caller fills, [`Frame::encode`] appends to one. The length is
//! checked against the limit from the 4-byte prefix alone, before any buffer
//! is grown for the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The only protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Bytes of the `len` prefix.
pub const LEN_BYTES: usize = 4;
/// Bytes counted by `len` before the payload (version .. seq).
pub const HEADER_AFTER_LEN: usize = 28;
/// Total header size on the wire, `len` included.
pub const HEADER_BYTES: usize = LEN_BYTES + HEADER_AFTER_LEN;
/// Default maximum of the `len` field (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Frame kinds of protocol v1 (0x0a–0x0d: the rooms extension). New kinds
/// extend the protocol; old peers answer them with an ERROR (`unknown_kind`)
/// rather than closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// client→gw: open or resume a session; gw→backend: first frame on a pooled connection.
    Hello = 0x01,
    /// gw→client (and backend→gw): session accepted.
    Welcome = 0x02,
    /// gw→backend: a session is now bound to this backend.
    Open = 0x03,
    /// Application payload, all directions.
    Data = 0x04,
    /// Close a session; backend→gw means kick.
    Close = 0x05,
    /// Heartbeat request, `seq` echoed in the PONG.
    Ping = 0x06,
    /// Heartbeat reply.
    Pong = 0x07,
    /// gw→client: drain notice.
    GoAway = 0x08,
    /// gw→client: a request (service_type + seq) failed.
    Error = 0x09,
    /// backend→gw: put a session into a room (gw→backend: the confirmation).
    Join = 0x0a,
    /// backend→gw: take a session out of a room (gw→backend: the confirmation).
    Leave = 0x0b,
    /// backend→gw: deliver a payload to every member of a room, fleet-wide.
    Publish = 0x0c,
    /// gw→client: a room's message, with the room and its sequence number.
    Message = 0x0d,
}

impl Kind {
    /// Every kind of v1, in wire order.
    pub const ALL: [Kind; 13] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Open,
        Kind::Data,
        Kind::Close,
        Kind::Ping,
        Kind::Pong,
        Kind::GoAway,
        Kind::Error,
        Kind::Join,
        Kind::Leave,
        Kind::Publish,
        Kind::Message,
    ];

    /// Maps a wire byte to a kind; `None` for kinds this version does not know.
    #[inline]
    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(b).wrapping_sub(1)).copied()
    }

    /// Lower-case name, as used in docs, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Welcome => "welcome",
            Kind::Open => "open",
            Kind::Data => "data",
            Kind::Close => "close",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::GoAway => "goaway",
            Kind::Error => "error",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Publish => "publish",
            Kind::Message => "message",
        }
    }
}

/// The fixed 28 bytes after `len`, kind kept raw so unknown kinds survive decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub service_type: u16,
    pub realm_id: u32,
    pub user_id: u64,
    pub session_id: u64,
    pub seq: u32,
}

impl Header {
    /// A v1 header of the given kind with every id zero.
    pub fn new(kind: Kind) -> Header {
        Header {
            version: VERSION,
            kind: kind as u8,
            ..Header::default()
        }
    }

    /// The kind, if this version knows it.
    #[inline]
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_u8(self.kind)
    }

    fn put(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.version);
        dst.put_u8(self.kind);
        dst.put_u16(self.service_type);
        dst.put_u32(self.realm_id);
        dst.put_u64(self.user_id);
        dst.put_u64(self.session_id);
        dst.put_u32(self.seq);
    }

    /// Reads the 28 header bytes; the caller guarantees `src` has them.
    #[inline]
    fn get(src: &mut impl Buf) -> Header {
        Header {
            version: src.get_u8(),
            kind: src.get_u8(),
            service_type: src.get_u16(),
            realm_id: src.get_u32(),
            user_id: src.get_u64(),
            session_id: src.get_u64(),
            seq: src.get_u32(),
        }
    }

    /// Parses a header from the first [`HEADER_BYTES`] of a complete encoded
    /// frame (as stored in a `Bytes`), without touching the payload.
    #[inline]
    pub fn peek(frame: &[u8]) -> Option<Header> {
        let mut h = frame.get(LEN_BYTES..HEADER_BYTES)?;
        Some(Header::get(&mut h))
    }
}

/// One decoded frame. The payload shares the read buffer's memory (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Bytes,
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// `len` is above the configured maximum. Nothing was buffered for it;
    /// the stream cannot be resynchronised and must be closed.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    /// `len` is below the 28-byte fixed header. Fatal for the stream.
    #[error("frame length {len} is shorter than the 28-byte header")]
    TooShort { len: u32 },
    /// A whole frame with a version other than 1 was consumed.
    #[error("unsupported protocol version {} (this peer speaks 1)", header.version)]
    UnsupportedVersion { header: Header },
    /// A whole v1 frame of a kind this peer does not know was consumed; the
    /// stream is still in sync, so the peer can answer with an ERROR.
    #[error("unknown frame kind 0x{:02x}", header.kind)]
    UnknownKind { header: Header },
}

impl FrameError {
    /// Whether the byte stream is still aligned on a frame boundary after this
    /// error (the bad frame was consumed whole).
    pub fn stream_in_sync(&self) -> bool {
        matches!(
            self,
            FrameError::UnsupportedVersion { .. } | FrameError::UnknownKind { .. }
        )
    }
}

/// Checks the length prefix at the start of `buf`: `Ok(Some(total))` when a
/// whole frame of `total` bytes (prefix included) is buffered, `Ok(None)`
/// when more bytes are needed. Fails as soon as the 4-byte prefix is known to
/// be out of bounds, so an oversized frame never causes a large allocation.
#[inline]
pub fn check(buf: &[u8], max_len: u32) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    if (len as usize) < HEADER_AFTER_LEN {
        return Err(FrameError::TooShort { len });
    }
    let total = LEN_BYTES + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Splits one whole frame off the front of `buf` as raw bytes (prefix
/// included), or `None` when it is not complete yet. Used by relays that
/// forward frames without re-encoding them.
pub fn split_raw(buf: &mut BytesMut, max_len: u32) -> Result<Option<BytesMut>, FrameError> {
    match check(buf, max_len)? {
        Some(total) => Ok(Some(buf.split_to(total))),
        None => Ok(None),
    }
}

/// Validates the version and kind of one raw frame produced by [`split_raw`].
#[inline]
pub fn parse_raw(raw: &[u8]) -> Result<Header, FrameError> {
    let header = Header::peek(raw).ok_or(FrameError::TooShort {
        len: raw.len().saturating_sub(LEN_BYTES) as u32,
    })?;
    if header.version != VERSION {
        return Err(FrameError::UnsupportedVersion { header });
    }
    if header.kind().is_none() {
        return Err(FrameError::UnknownKind { header });
    }
    Ok(header)
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)` means
/// "incomplete, read more"; see [`FrameError::stream_in_sync`] for errors.
pub fn decode(buf: &mut BytesMut, max_len: u32) -> Result<Option<Frame>, FrameError> {
    let Some(mut raw) = split_raw(buf, max_len)? else {
        return Ok(None);
    };
    let header = parse_raw(&raw)?;
    raw.advance(HEADER_BYTES);
    Ok(Some(Frame {
        header,
        payload: raw.freeze(),
    }))
}

/// The frames of `buf` (several whole encoded frames back to back, as
/// [`check`] accepted them) one by one, each its own `Bytes` over the same
/// memory (no copy). A trailing partial frame comes out as it is.
pub fn split_frames(mut buf: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let total = match buf.get(..LEN_BYTES) {
            Some(p) => LEN_BYTES + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => buf.len(),
        };
        Some(buf.split_to(total.min(buf.len())))
    })
}

/// Overwrites the session and user ids of one raw encoded frame in place, so
/// a relay can stamp its own view of the identity without re-encoding.
#[inline]
pub fn stamp_ids(raw: &mut [u8], user_id: u64, session_id: u64) {
    if raw.len() >= HEADER_BYTES {
        raw[12..20].copy_from_slice(&user_id.to_be_bytes());
        raw[20..28].copy_from_slice(&session_id.to_be_bytes());
    }
}

impl Frame {
    /// A frame with the given header and payload.
    pub fn new(header: Header, payload: impl Into<Bytes>) -> Frame {
        Frame {
            header,
            payload: payload.into(),
        }
    }

    /// Encoded size on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }

    /// Appends the wire encoding to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.wire_len());
        dst.put_u32((HEADER_AFTER_LEN + self.payload.len()) as u32);
        self.header.put(dst);
        dst.put_slice(&self.payload);
    }

    /// The wire encoding as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Parses the payload as a JSON control object.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        // An empty payload is the empty object, so `{}`-only kinds may omit it.
        if self.payload.is_empty() {
            return serde_json::from_slice(b"{}");
        }
        // Control payloads are objects; serde would also take an array for
        // a struct (`[]` as a HELLO with every field absent).
        let first = self.payload.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(<serde_json::Error as serde::de::Error>::custom(
                "the payload must be a JSON object",
            ));
        }
        serde_json::from_slice(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_payloads_must_be_objects() {
        #[derive(serde::Deserialize, Debug)]
        struct Hello {
            #[allow(dead_code)]
            token: Option<String>,
        }
        let f = |p: &'static [u8]| Frame::new(Header::new(Kind::Hello), Bytes::from_static(p));
        assert!(f(b"").json::<Hello>().is_ok());
        assert!(f(b" {\"token\": \"t\"}").json::<Hello>().is_ok());
        for bad in [&b"[]"[..], b"[null]", b"null", b"1", b"\"x\""] {
            let e = Frame::new(Header::new(Kind::Hello), Bytes::from_static(bad))
                .json::<Hello>()
                .unwrap_err();
            assert!(e.to_string().contains("JSON object"), "{e}");
        }
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            1u8..=9,
            any::<u16>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(
                |(kind, service_type, realm_id, user_id, session_id, seq)| Header {
                    version: VERSION,
                    kind,
                    service_type,
                    realm_id,
                    user_id,
                    session_id,
                    seq,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let f = Frame::new(h, payload);
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            prop_assert_eq!(buf.len(), f.wire_len());
            let got = decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
            prop_assert_eq!(got, f);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn every_strict_prefix_is_incomplete(h in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Frame::new(h, payload).to_bytes();
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                prop_assert_eq!(decode(&mut buf, DEFAULT_MAX_FRAME_BYTES), Ok(None));
                prop_assert_eq!(buf.len(), cut, "incomplete input must not be consumed");
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), max in 0u32..2048) {
            let mut buf = BytesMut::from(&data[..]);
            // Decode until the buffer is exhausted or the stream is out of sync.
            for _ in 0..256 {
                match decode(&mut buf, max) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) if e.stream_in_sync() => continue,
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn oversized_is_rejected_from_the_prefix_alone() {
        // Only the 4-byte prefix is present: the decision needs nothing else.
        let mut buf = BytesMut::from(&(2_000_000u32).to_be_bytes()[..]);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                len: 2_000_000,
                max: DEFAULT_MAX_FRAME_BYTES
            })
        );
        assert!(
            buf.capacity() < 1024,
            "no allocation for the claimed payload"
        );
    }

    #[test]
    fn short_length_is_rejected() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 27][..]);
        assert_eq!(
            decode(&mut buf, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TooShort { len: 27 })
        );
    }

    #[test]
    fn unknown_kind_and_version_are_consumed_whole() {
        let mut h = Header::new(Kind::Data);
        h.kind = 0x7f;
        h.seq = 9;
        let mut buf = BytesMut::new();
        Frame::new(h, &b"xy"[..]).encode(&mut buf);
        let mut v = Header::new(Kind::Ping);
        v.version = 2;
        Frame::new(v, Bytes::new()).encode(&mut buf);
        let e = decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(e, FrameError::UnknownKind { header } if header.seq == 9));
        assert!(e.stream_in_sync());
        let e = decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(e, FrameError::UnsupportedVersion { header } if header.version == 2));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_frames_yields_each_frame() {
        let mut buf = BytesMut::new();
        for p in [&b"a"[..], b"", b"xyz"] {
            Frame::new(Header::new(Kind::Data), p).encode(&mut buf);
        }
        buf.extend_from_slice(&[0, 0]);
        let parts: Vec<Bytes> = split_frames(buf.freeze()).collect();
        assert_eq!(parts.len(), 4);
        let payloads: Vec<&[u8]> = parts[..3].iter().map(|f| &f[HEADER_BYTES..]).collect();
        assert_eq!(payloads, [&b"a"[..], b"", b"xyz"]);
        assert_eq!(&parts[3][..], &[0, 0], "a partial tail comes out as it is");
    }

    #[test]
    fn stamp_ids_rewrites_in_place() {
        let mut h = Header::new(Kind::Data);
        h.user_id = 1;
        h.session_id = 2;
        let mut raw = BytesMut::new();
        Frame::new(h, &b"p"[..]).encode(&mut raw);
        stamp_ids(&mut raw, 77, 88);
        let f = decode(&mut raw, 1024).unwrap().unwrap();
        assert_eq!((f.header.user_id, f.header.session_id), (77, 88));
        assert_eq!(&f.payload[..], b"p");
    }

    #[test]
    fn kind_table_matches_wire_values() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_u8(k as u8), Some(k));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(0x0e), None);
        assert_eq!(Kind::from_u8(0xff), None);
    }
}

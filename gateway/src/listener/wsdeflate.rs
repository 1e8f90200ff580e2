//! WebSocket `permessage-deflate` (RFC 7692), off unless
//! `websocket.permessage_deflate` is set.
//!
//! The gateway always answers `server_no_context_takeover;
//! client_no_context_takeover`: every message is compressed and
//! decompressed on its own, so a session keeps no compression state at all
//! between messages (an idle session costs nothing extra) and each worker
//! thread reuses one compressor and one decompressor (32 KiB windows)
//! for every session it runs. Offers that ask for a smaller server window
//! than 15 bits are declined (the session runs uncompressed).
//!
//! The session's WebSocket codec (`session::ws`) inflates a message whose
//! first frame has RSV1 set (never beyond `limits.max_frame_bytes`) and
//! sends messages of at least `websocket.compress_min_bytes` compressed.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The answer to an acceptable offer.
pub(crate) const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Picks the first acceptable `permessage-deflate` offer in the request's
/// `Sec-WebSocket-Extensions` values; `Some(ACCEPTED)` to answer with it.
pub(crate) fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    for offer in offers.flat_map(|v| v.split(',')) {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            continue;
        }
        let ok = parts.all(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            let value = value.trim().trim_matches('"');
            match name.trim() {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_empty(),
                // We compress with a 15-bit window only.
                "server_max_window_bits" => value == "15",
                // We inflate any window up to 15 bits.
                "client_max_window_bits" => {
                    value.is_empty() || value.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
                }
                _ => false,
            }
        });
        if ok {
            return Some(ACCEPTED);
        }
    }
    None
}

thread_local! {
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Deflates one message (no context takeover), without the trailing
/// `00 00 ff ff` (RFC 7692 7.2.1).
pub fn deflate(data: &[u8]) -> Bytes {
    COMPRESS.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = data;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // Sync flush ends the block on a byte boundary with 00 00 ff ff.
            let _ = c.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(c.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        Bytes::from(out)
    })
}

/// Inflates one message; `None` if it is corrupt or would exceed `max`.
pub fn inflate(data: &[u8], max: usize) -> Option<Vec<u8>> {
    DECOMPRESS.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((data.len() * 4).min(max).max(64));
        for input in [data, &[0, 0, 0xff, 0xff][..]] {
            let mut input = input;
            loop {
                if out.len() == out.capacity() {
                    if out.len() >= max {
                        return None;
                    }
                    out.reserve(out.capacity().min(max - out.len()).max(64));
                }
                let before = d.total_in();
                let st = d
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .ok()?;
                input = &input[(d.total_in() - before) as usize..];
                if out.len() > max {
                    return None;
                }
                if st == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                    break;
                }
            }
        }
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_only_when_we_can_honour_them() {
        let one = |s: &'static str| negotiate(std::iter::once(s));
        assert_eq!(one("permessage-deflate"), Some(ACCEPTED));
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(ACCEPTED)
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=10"),
            None,
            "a smaller server window than 15 is declined"
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            Some(ACCEPTED),
            "the next offer is taken"
        );
        assert_eq!(one("x-webkit-deflate-frame"), None);
        assert_eq!(one("permessage-deflate; unknown=1"), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn deflate_and_inflate_round_trip_and_bombs_are_refused() {
        let text = br#"{"op":"move","x":12,"y":40,"room":"lobby"}"#.repeat(50);
        let z = deflate(&text);
        assert!(z.len() < text.len() / 10, "{} → {}", text.len(), z.len());
        assert_eq!(inflate(&z, 1 << 20).unwrap(), text);
        assert_eq!(inflate(&deflate(b""), 16).unwrap(), b"");
        // 1 MiB of zeros deflates to a few KiB; a 64 KiB cap refuses it.
        let bomb = deflate(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert!(inflate(&bomb, 64 * 1024).is_none());
        assert!(inflate(b"\xff\xff\xff garbage", 1 << 20).is_none());
    }
}

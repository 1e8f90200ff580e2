//! Property checks for the gateway's own input paths, shared by the fuzz
//! targets in `fuzz/` and the unit test that replays their corpora (as
//! `gg_proto::fuzzing` does for the frame decoder): a crash the fuzzer
//! finds becomes a regression test by dropping the input in the corpus.
//! hyper and rustls fuzz their own parsers; these cover what
//! this crate decides from a peer's bytes.

use gg_proto::frame;

use crate::listener::http::{CALL_PREFIX, handshake, header_num, is_ws_upgrade};
use crate::listener::sniff::{Sniffed, classify};

/// The first bytes of a connection: a PROXY header parses within them;
/// classified from the first byte alone,
/// and on the frame path the pre-HELLO check never asks to buffer more
/// than `max_hello_bytes` (4096 by default) plus the length prefix.
pub fn sniff(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let kind = classify(data);
    match data[0] {
        0x16 => assert_eq!(kind, Sniffed::Tls),
        b if b.is_ascii_uppercase() => assert_eq!(kind, Sniffed::Http),
        _ => assert_eq!(kind, Sniffed::Frames),
    }
    // The PROXY header parser (for trusted sources) never reads past the
    // bytes it was given.
    if let Some(Ok((_, len))) = crate::listener::proxy::parse(data) {
        assert!(len <= data.len(), "{len}");
    }
    if kind == Sniffed::Frames {
        let max = crate::config::DEFAULT_MAX_HELLO_BYTES;
        if let Ok(Some(total)) = frame::check(data, max) {
            assert!(total <= frame::LEN_BYTES + max as usize, "{total}");
            assert!(total <= data.len());
        }
    }
}

/// An HTTP request head, as the client port decides from it: the
/// WebSocket upgrade check and handshake, the call path and the numeric
/// headers. Nothing panics; a successful handshake yields an accept key.
pub fn http_head(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let mut b = hyper::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"));
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(request) = b.body(()) else {
        return;
    };
    if is_ws_upgrade(request.headers())
        && let Ok(key) = handshake(&request)
    {
        assert_eq!(key.len(), 28, "a SHA-1 accept key in base64");
    }
    if let Some(service) = request.uri().path().strip_prefix(CALL_PREFIX) {
        let _ = service.parse::<u16>();
    }
    for name in ["x-user-id", "x-realm-id"] {
        let present = request.headers().contains_key(name);
        if let Err(e) = header_num::<u64>(request.headers(), name) {
            assert!(present, "an absent header is not an error: {e}");
        }
    }
}

/// A configuration file: parsing never panics, and a refusal always says
/// at least one thing.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = crate::config::Config::parse(&text, Some("fuzz".into())) {
        assert!(!e.0.is_empty(), "an error without a message");
        assert!(e.0.iter().all(|m| !m.is_empty()));
    }
}

/// The bytes a WebSocket client sends after the upgrade, as the session's
/// codec parses them (permessage-deflate negotiated, so compressed
/// messages are inflated too): nothing panics, no message is larger than
/// the limit, and the read buffer never grows beyond what arrived.
pub fn ws_frames(data: &[u8]) {
    crate::session::ws::check_parse(data, 1024);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every input in `fuzz/corpus/<target>` through its property.
    fn replay(target: &str, check: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            check(&std::fs::read(&path).expect("read"));
            n += 1;
        }
        assert!(n > 0, "empty corpus {}", dir.display());
    }

    proptest::proptest! {
        #[test]
        fn random_inputs_hold_the_properties(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            super::sniff(&data);
            super::http_head(&data);
            super::config(&data);
            super::ws_frames(&data);
        }
    }

    #[test]
    fn sniff_corpus() {
        replay("sniff", super::sniff);
    }

    #[test]
    fn http_head_corpus() {
        replay("http_head", super::http_head);
    }

    #[test]
    fn ws_frames_corpus() {
        replay("ws_frames", super::ws_frames);
    }

    #[test]
    fn config_corpus() {
        replay("config", super::config);
    }
}

//! Decodes every hex test vector in `docs/protocol.md` and checks it against
//! the fields stated in the comment above it, so the document cannot drift
//! from the codec.

use bytes::BytesMut;
use gg_proto::frame::{self, DEFAULT_MAX_FRAME_BYTES};

fn field<'a>(meta: &'a str, key: &str) -> &'a str {
    let start = meta
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {meta}"))
        + key.len()
        + 1;
    let rest = &meta[start..];
    if let Some(q) = rest.strip_prefix('\'') {
        &q[..q.find('\'').expect("closing quote")]
    } else {
        rest.split_whitespace().next().expect("value")
    }
}

#[test]
fn every_documented_vector_decodes_to_its_fields() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md");
    let mut lines = doc.lines();
    let mut kinds = Vec::new();
    while let Some(line) = lines.next() {
        let Some(meta) = line.strip_prefix("<!-- vector ") else {
            continue;
        };
        assert_eq!(lines.next(), Some("```hex"));
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            for b in l.split_whitespace() {
                bytes.push(u8::from_str_radix(b, 16).expect("hex byte"));
            }
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let f = frame::decode(&mut buf, DEFAULT_MAX_FRAME_BYTES)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty(), "vector has trailing bytes: {meta}");
        let h = f.header;
        let num = |k: &str| field(meta, k).parse::<u64>().expect("number");
        assert_eq!(u64::from(h.kind), num("kind"), "{meta}");
        assert_eq!(u64::from(h.service_type), num("service"), "{meta}");
        assert_eq!(u64::from(h.realm_id), num("realm"), "{meta}");
        assert_eq!(h.user_id, num("user"), "{meta}");
        assert_eq!(h.session_id, num("session"), "{meta}");
        assert_eq!(u64::from(h.seq), num("seq"), "{meta}");
        if meta.contains("payload_hex=") {
            let hex: String = f.payload.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, field(meta, "payload_hex"), "{meta}");
        } else {
            assert_eq!(
                std::str::from_utf8(&f.payload).expect("utf8"),
                field(meta, "payload"),
                "{meta}"
            );
        }
        // The rooms extension's binary payloads decode with their codec.
        match h.kind() {
            Some(gg_proto::Kind::Publish) => {
                gg_proto::room::parse_publish(&f.payload).expect("PUBLISH payload");
            }
            Some(gg_proto::Kind::Message) => {
                let (_, seq, _) =
                    gg_proto::room::parse_message(&f.payload).expect("MESSAGE payload");
                assert_eq!(seq as u32, h.seq, "{meta}");
            }
            _ => {}
        }
        // Re-encoding gives the same bytes.
        assert_eq!(&f.to_bytes()[..], &bytes[..]);
        kinds.push(h.kind);
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        (1..=13).collect::<Vec<u8>>(),
        "a vector for every kind"
    );
}

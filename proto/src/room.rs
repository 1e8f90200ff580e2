//! Rooms on the wire (a backward-compatible extension of protocol v1): the
//! JSON payloads of JOIN and LEAVE, and the binary payloads of PUBLISH
//! (backend → gateway) and MESSAGE (gateway → client).
//!
//! ```text
//! PUBLISH payload: room_len u8 | room (room_len bytes) | data
//! MESSAGE payload: room_len u8 | room (room_len bytes) | room_seq u64 BE | data
//! ```
//!
//! A MESSAGE frame is the same bytes for every member of a room (its header
//! names no session), so a gateway encodes it once per room and hands every
//! member the same buffer.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{HEADER_BYTES, Kind, VERSION};

/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;

/// Whether `name` is a valid room name: 1–128 bytes of `A–Z a–z 0–9 _ . : -`.
pub fn valid_room(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Why a room name or payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error(
        "invalid room name {0:?}: 1-{MAX_ROOM_BYTES} bytes of letters, digits, '_', '.', ':' or '-'"
    )]
    BadName(String),
    #[error("room payload is truncated: it must start with room_len u8 and the room name")]
    Truncated,
    #[error("MESSAGE payload is truncated: room_seq u64 is missing")]
    NoSeq,
}

/// The JSON payload of JOIN and LEAVE from a backend: `{"room": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRef {
    pub room: String,
}

/// The gateway's answer to a backend's JOIN (kind JOIN, the request's `seq`):
/// the session is in the room and receives every message after `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub room: String,
    pub seq: u64,
}

fn checked(room: &str) -> Result<u8, RoomError> {
    if valid_room(room) {
        Ok(room.len() as u8)
    } else {
        Err(RoomError::BadName(room.to_string()))
    }
}

/// Splits `room_len | room | rest`.
fn split_room(payload: &[u8]) -> Result<(&str, &[u8]), RoomError> {
    let (&n, rest) = payload.split_first().ok_or(RoomError::Truncated)?;
    let n = usize::from(n);
    if rest.len() < n {
        return Err(RoomError::Truncated);
    }
    let (name, rest) = rest.split_at(n);
    let name = std::str::from_utf8(name).map_err(|_| RoomError::BadName(format!("{name:?}")))?;
    if !valid_room(name) {
        return Err(RoomError::BadName(name.to_string()));
    }
    Ok((name, rest))
}

/// The payload of a PUBLISH frame.
pub fn publish_payload(room: &str, data: &[u8]) -> Result<Bytes, RoomError> {
    let n = checked(room)?;
    let mut b = BytesMut::with_capacity(1 + room.len() + data.len());
    b.put_u8(n);
    b.put_slice(room.as_bytes());
    b.put_slice(data);
    Ok(b.freeze())
}

/// Reads a PUBLISH payload: (room, data).
pub fn parse_publish(payload: &[u8]) -> Result<(&str, &[u8]), RoomError> {
    split_room(payload)
}

/// One whole encoded MESSAGE frame (length prefix included), shared by
/// every member: `service_type` is the publisher's, `seq` the low 32 bits of
/// `room_seq`, every id zero.
pub fn message_frame(
    service_type: u16,
    room: &str,
    room_seq: u64,
    data: &[u8],
) -> Result<Bytes, RoomError> {
    let n = checked(room)?;
    let payload = 1 + room.len() + 8 + data.len();
    let mut b = BytesMut::with_capacity(HEADER_BYTES + payload);
    b.put_u32((crate::frame::HEADER_AFTER_LEN + payload) as u32);
    b.put_u8(VERSION);
    b.put_u8(Kind::Message as u8);
    b.put_u16(service_type);
    b.put_u32(0);
    b.put_u64(0);
    b.put_u64(0);
    b.put_u32(room_seq as u32);
    b.put_u8(n);
    b.put_slice(room.as_bytes());
    b.put_u64(room_seq);
    b.put_slice(data);
    Ok(b.freeze())
}

/// Reads a MESSAGE payload: (room, room_seq, data).
pub fn parse_message(payload: &[u8]) -> Result<(&str, u64, &[u8]), RoomError> {
    let (room, rest) = split_room(payload)?;
    let (seq, data) = rest.split_first_chunk::<8>().ok_or(RoomError::NoSeq)?;
    Ok((room, u64::from_be_bytes(*seq), data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn room_names_are_checked() {
        assert!(valid_room("guild:42"));
        assert!(valid_room("lobby.eu-1_a"));
        assert!(valid_room(&"a".repeat(128)));
        for bad in ["", "a b", "röom", "x/y", &"a".repeat(129)] {
            assert!(!valid_room(bad), "{bad:?}");
        }
        assert!(matches!(
            publish_payload("a b", b"x"),
            Err(RoomError::BadName(_))
        ));
    }

    #[test]
    fn publish_round_trips_and_truncation_is_an_error() {
        let p = publish_payload("guild:7", b"hello").unwrap();
        assert_eq!(&p[..], b"\x07guild:7hello");
        assert_eq!(parse_publish(&p).unwrap(), ("guild:7", &b"hello"[..]));
        assert_eq!(parse_publish(b""), Err(RoomError::Truncated));
        assert_eq!(parse_publish(b"\x09guild"), Err(RoomError::Truncated));
        assert!(matches!(
            parse_publish(b"\x03a b"),
            Err(RoomError::BadName(_))
        ));
        assert!(matches!(parse_publish(b"\x00"), Err(RoomError::BadName(_))));
    }

    #[test]
    fn a_message_frame_decodes_as_a_v1_frame() {
        let raw = message_frame(3, "lobby", 0x1_0000_0005, b"go").unwrap();
        let f = frame::decode(&mut BytesMut::from(&raw[..]), u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(f.header.kind(), Some(Kind::Message));
        assert_eq!(
            (f.header.service_type, f.header.seq, f.header.session_id),
            (3, 5, 0)
        );
        assert_eq!(
            parse_message(&f.payload).unwrap(),
            ("lobby", 0x1_0000_0005, &b"go"[..])
        );
        assert_eq!(parse_message(b"\x01a\x00"), Err(RoomError::NoSeq));
    }
}

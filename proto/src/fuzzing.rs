//! Property checks shared by the fuzz targets (`fuzz/`) and the test that
//! replays their corpus (`proto/tests/fuzz_corpus.rs`), so a crash found by
//! the fuzzer becomes a regression test by dropping the input in the corpus.

use bytes::BytesMut;

use crate::frame::{self, Frame};

/// Feeds `data[1..]` to the decoder in chunks of `data[0]` bytes, as a
/// gateway reads a socket. Panics if the decoder consumes an incomplete
/// frame, or if a decoded frame does not re-encode to the bytes it consumed.
pub fn decode_stream(data: &[u8]) {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            match frame::decode(&mut buf, 4096) {
                Ok(Some(f)) => {
                    let consumed = before.len() - buf.len();
                    assert_eq!(
                        &Frame::to_bytes(&f)[..],
                        &before[..consumed],
                        "re-encoding differs"
                    );
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before.len(), "an incomplete frame was consumed");
                    break;
                }
                Err(e) if e.stream_in_sync() => continue,
                Err(_) => return,
            }
        }
    }
}

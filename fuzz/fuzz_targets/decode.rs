//! Arbitrary bytes, in arbitrary chunk sizes, through the frame decoder; see
//! `gg_proto::fuzzing::decode_stream` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gg_proto::fuzzing::decode_stream(data));

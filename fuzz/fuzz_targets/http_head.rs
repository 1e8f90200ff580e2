//! An HTTP request head on the client port: upgrade checks, handshake, call
//! path and numeric headers; see `gateway::fuzzing::http_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzzing::http_head(data));

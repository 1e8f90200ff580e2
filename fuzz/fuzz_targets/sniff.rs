//! The first bytes of a client connection: protocol detection and the
//! pre-HELLO frame check; see `gateway::fuzzing::sniff`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzzing::sniff(data));

//! The bytes a WebSocket client sends after the upgrade, through the
//! session's codec; see `gateway::fuzzing::ws_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway::fuzzing::ws_frames(data));

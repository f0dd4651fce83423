//! ctl commands as written to `/PID/ctl` or POSTed to `/v1/processes/PID/ctl`.
#![no_main]

#[path = "../../agent/src/control/words.rs"]
mod words;

libfuzzer_sys::fuzz_target!(|data: &[u8]| words::fuzz_check(data));

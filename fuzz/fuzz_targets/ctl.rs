//! ctl commands as written to `/PID/ctl` or POSTed to `/v1/processes/PID/ctl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bpfproc::control::words::fuzz_check(data));

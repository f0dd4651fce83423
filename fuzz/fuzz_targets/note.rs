//! Plan 9 notes as written to `/PID/note` and `/PID/notepg` (the same property function as
//! ctl; a separate target so each keeps a corpus of its own language).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bpfproc::control::words::fuzz_check(data));

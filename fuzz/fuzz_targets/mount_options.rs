//! Mount options as mount(8), fstab and `bpfproc mount -o` hand them over.
#![no_main]

#[path = "../../agent/src/fs/options.rs"]
mod options;

libfuzzer_sys::fuzz_target!(|data: &[u8]| options::fuzz_check(data));

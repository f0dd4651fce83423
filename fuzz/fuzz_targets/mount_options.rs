//! Mount options as mount(8), fstab and `bpfproc mount -o` hand them over.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bpfproc::fs::options::fuzz_check(data));

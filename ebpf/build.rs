use which::which;

/// Cargo does not rebuild the BPF object when only the linker changes; tie it to bpf-linker so a
/// reinstalled linker (for a new pinned toolchain) produces a fresh object.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("utf-8 path")
    );
}

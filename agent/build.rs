use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The nightly that builds the BPF object; xtask installs it (and a bpf-linker built against its
/// LLVM) before any build. Keep in sync with xtask's `TOOLCHAIN`.
const TOOLCHAIN: &str = "nightly-2026-10-30";

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf = std::path::Path::new(&manifest)
        .parent()
        .context("agent has a parent dir")?
        .join("ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "bpfproc-ebpf",
            root_dir: ebpf.to_str().context("utf-8 path")?,
            ..Default::default()
        }],
        Toolchain::Custom(TOOLCHAIN),
    )
}

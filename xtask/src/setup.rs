//! Idempotent machine set-up: every tool and package the build and the tests need.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::TOOLCHAIN;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the tests drive for real: procps (ps, top, pgrep, free, uptime, w), psmisc
/// (pstree, pidof's sibling killall), fuse3 (fusermount3), curl, gdb, util-linux (setpriv,
/// unshare), prometheus (the server and promtool the metrics tests run),
/// prometheus-process-exporter (the benchmark's baseline), tmux (the terminal `bpfproc top` is
/// tested in), man-db (renders the generated man pages) and systemd (systemd-analyze checks
/// the unit file).
const APT_PACKAGES: &[&str] = &[
    "procps",
    "psmisc",
    "fuse3",
    "curl",
    "gdb",
    "util-linux",
    "prometheus",
    "prometheus-process-exporter",
    "tmux",
    "man-db",
    "systemd",
    // cc for the C programs that use include/prfcntl.h (tests/c/).
    "gcc",
    "libc6-dev",
    // The HTTP load test (agent/tests/stress.rs) and the network namespace of the loopback
    // test (agent/tests/security.rs).
    "wrk",
    "iproute2",
    // /usr/bin/python3, which any user may run (a pyenv python under /root is root's only):
    // the write-through tests write as another user with it (agent/tests/entries.rs).
    "python3",
];

/// Python modules the tests use, with the PyPI package that provides each:
/// openapi-spec-validator (checks /v1/openapi.json), kubernetes-validate (validates the
/// manifests against the Kubernetes schemas it ships, offline).
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("openapi_spec_validator", "openapi-spec-validator"),
    ("kubernetes_validate", "kubernetes-validate"),
];

/// The psutil whose own test suite agent/tests/psutil.rs runs on the kernel's /proc and on a
/// view (keep in sync with PSUTIL_VERSION there); fuse.rs also uses it on a mounted view.
const PSUTIL_VERSION: &str = "7.2.2";
/// The SHA-256 of psutil-7.2.2.tar.gz, the sdist whose tests/ that test runs.
const PSUTIL_SDIST_SHA256: &str =
    "0746f5f8d406af344fd547f1c8daa5f5c33dbc293bb8d6a16d80b4bb88f59372";

/// PyPI packages pinned to one version (distribution name, version): psutil and what its test
/// suite needs here, pytest and pytest-timeout (so that a hang cannot stall the run), and the
/// OpenTelemetry project's generated protobuf types, with which agent/tests/fleet.rs's OTLP
/// receiver decodes what the agent exports.
const PIP_PINNED: &[(&str, &str)] = &[
    ("psutil", PSUTIL_VERSION),
    ("pytest", "9.0.2"),
    ("pytest-timeout", "2.4.0"),
    ("opentelemetry-proto", "1.45.2"),
];

pub fn run() -> anyhow::Result<()> {
    toolchain()?;
    bpf_linker()?;
    apt()?;
    pip()?;
    pip_pinned()?;
    psutil_tests()?;
    Ok(())
}

/// PIP_PINNED at their versions: one `python3` asks for every installed version, and one
/// `pip install` fixes whichever differ.
fn pip_pinned() -> anyhow::Result<()> {
    let names: Vec<&str> = PIP_PINNED.iter().map(|(name, _)| *name).collect();
    let have =
        stdout(Command::new("python3").args(["-c", VERSIONS]).args(&names)).unwrap_or_default();
    let have: Vec<&str> = have.lines().collect();
    let wrong: Vec<String> = PIP_PINNED
        .iter()
        .enumerate()
        .filter(|(i, (_, version))| have.get(*i) != Some(version))
        .map(|(_, (name, version))| format!("{name}=={version}"))
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    eprintln!("setup: pip install {}", wrong.join(" "));
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&wrong)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed", wrong.join(" "));
    }
    Ok(())
}

/// `python3 -c VERSIONS NAME…`: the installed version of each distribution, `-` for none.
const VERSIONS: &str = "\
import sys, importlib.metadata as m
for name in sys.argv[1:]:
    try:
        print(m.version(name))
    except m.PackageNotFoundError:
        print('-')
";

/// Where psutil's own tests are unpacked: `tests/` of its sdist, with an empty `pytest.ini`
/// beside it (agent/tests/psutil.rs looks here).
fn psutil_tests_dir() -> std::path::PathBuf {
    crate::root()
        .join("target/psutil-tests")
        .join(format!("psutil-{PSUTIL_VERSION}"))
}

/// psutil's sdist from PyPI (pip, so through the configured index; its hash checked), of which
/// only `tests/` is unpacked: the package itself is the installed one, and psutil's
/// pyproject.toml asks pytest for plugins (xdist, instafail) these runs do not use.
fn psutil_tests() -> anyhow::Result<()> {
    let dir = psutil_tests_dir();
    // pytest.ini is written last, just before the rename that makes the directory appear.
    if dir.join("pytest.ini").exists() && dir.join("tests/test_linux.py").exists() {
        return Ok(());
    }
    let base = dir.parent().context("psutil tests dir has a parent")?;
    let download = base.join("download");
    let unpack = base.join("unpack");
    for scratch in [&download, &unpack] {
        if scratch.exists() {
            fs::remove_dir_all(scratch)?;
        }
        fs::create_dir_all(scratch)?;
    }
    eprintln!("setup: fetching the tests of psutil {PSUTIL_VERSION} (its sdist)");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .args(["--no-binary", ":all:"])
        .arg(format!("psutil=={PSUTIL_VERSION}"))
        .arg("-d")
        .arg(&download)
        .status()
        .context("running pip download")?;
    if !status.success() {
        bail!("pip download psutil=={PSUTIL_VERSION} failed");
    }
    let top = format!("psutil-{PSUTIL_VERSION}");
    let sdist = download.join(format!("{top}.tar.gz"));
    let status = Command::new("python3")
        .args(["-c", UNPACK_TESTS])
        .arg(&sdist)
        .arg(PSUTIL_SDIST_SHA256)
        .arg(&unpack)
        .arg(&top)
        .status()
        .context("running python3 to unpack the sdist")?;
    if !status.success() {
        bail!("unpacking the tests of {} failed", sdist.display());
    }
    fs::write(
        unpack.join(&top).join("pytest.ini"),
        "# Written by `cargo xtask setup`: pytest must not look further up for a configuration.\n\
         [pytest]\n",
    )?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(unpack.join(&top), &dir)?;
    fs::remove_dir_all(&unpack)?;
    fs::remove_dir_all(&download)?;
    Ok(())
}

/// `python3 -c UNPACK_TESTS SDIST SHA256 DEST TOP`: checks the sdist's hash and unpacks its
/// `TOP/tests/` into DEST.
const UNPACK_TESTS: &str = "\
import hashlib, sys, tarfile
sdist, want, dest, top = sys.argv[1:5]
have = hashlib.sha256(open(sdist, 'rb').read()).hexdigest()
if have != want:
    sys.exit(f'{sdist}: sha256 {have}, expected {want}')
with tarfile.open(sdist) as t:
    members = [m for m in t.getmembers() if m.name.startswith(top + '/tests/')]
    if not members:
        sys.exit(f'no {top}/tests/ in {sdist}')
    safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
    t.extractall(dest, members=members, **safe)
";

/// PIP_PACKAGES for the `python3` on PATH.
fn pip() -> anyhow::Result<()> {
    for (module, package) in PIP_PACKAGES {
        if ok(Command::new("python3").args(["-c", &format!("import {module}")])) {
            continue;
        }
        eprintln!("setup: pip install {package}");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", package])
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!("pip install {package} failed");
        }
    }
    Ok(())
}

/// cargo-fuzz, for `cargo xtask fuzz` only (the test suite runs the fuzz properties without
/// it; installing takes a minute, fuzzing builds take longer).
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if ok(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: cargo install cargo-fuzz");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("installing cargo-fuzz failed");
    }
    Ok(())
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn toolchain() -> anyhow::Result<()> {
    let sysroot = stdout(
        Command::new("rustc")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    );
    let complete = sysroot.as_ref().is_some_and(|s| {
        Path::new(s)
            .join("lib/rustlib/src/rust/library/core")
            .exists()
            && Path::new(s).join("bin/cargo-clippy").exists()
            && Path::new(s).join("bin/rustfmt").exists()
    });
    if complete {
        return Ok(());
    }
    eprintln!("setup: installing toolchain {TOOLCHAIN}");
    let status = Command::new("rustup")
        .args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"])
        .args(["--component", "rust-src,rustfmt,clippy", "--no-self-update"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("rustup toolchain install {TOOLCHAIN} failed");
    }
    Ok(())
}

/// bpf-linker must be linked against the pinned toolchain's own LLVM; a stamp records which.
fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = stdout(
        Command::new("rustc")
            .arg(format!("+{TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )
    .context("pinned toolchain missing after install")?;
    let home = std::env::var("CARGO_HOME")
        .or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cargo")))
        .context("no CARGO_HOME or HOME")?;
    let stamp = Path::new(&home).join(".bpfproc-bpf-linker");
    let want = format!("{BPF_LINKER_VERSION} {TOOLCHAIN}");
    // bpf-linker finds libLLVM through the toolchain's library path, which rustup sets.
    let have_linker =
        ok(Command::new("rustup").args(["run", TOOLCHAIN, "bpf-linker", "--version"]));
    if have_linker && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    let libdir = Path::new(&sysroot).join("lib");
    let llvm = fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                // The real library; `libLLVM-N-….so` beside it is a linker script naming it.
                n.starts_with("libLLVM.so.")
            })
        })
        .context("the pinned toolchain ships no libLLVM")?;
    let major = llvm_major(&llvm).context("cannot tell the LLVM version")?;
    let prefix = Path::new(&home).join("bpfproc-llvm-prefix");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} of {TOOLCHAIN}"
    );
    let status = Command::new("cargo")
        .arg(format!("+{TOOLCHAIN}"))
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("installing bpf-linker failed");
    }
    fs::write(&stamp, want)?;
    Ok(())
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.ends_with("installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        eprintln!("setup: missing packages {missing:?}; run as root to install them");
        return Ok(());
    }
    eprintln!("setup: apt-get install {missing:?}");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .envs(env)
        .status()?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .envs(env)
        .status()?;
    if !status.success() {
        bail!("apt-get install {missing:?} failed");
    }
    Ok(())
}

/// `libLLVM.so.23.1-rust-…` or `libLLVM-23-rust-….so` → "23".
fn llvm_major(lib: &Path) -> Option<String> {
    let name = lib.file_name()?.to_str()?.strip_prefix("libLLVM")?;
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    let major: String = digits.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_reads_both_library_names() {
        let v = |s: &str| llvm_major(Path::new(s));
        assert_eq!(
            v("/x/libLLVM.so.23.1-rust-1.101.0-nightly").as_deref(),
            Some("23")
        );
        assert_eq!(
            v("libLLVM-22-rust-1.97.0-nightly.so").as_deref(),
            Some("22")
        );
        assert_eq!(v("libfoo.so"), None);
    }
}

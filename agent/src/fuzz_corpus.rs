//! The fuzz targets' properties (`control::words::fuzz_check`, `fs::options::fuzz_check`), run
//! in every test run over the committed seeds in `fuzz/corpus/` and a few hundred thousand
//! inputs mutated from them: the CI form of `cargo xtask fuzz`, which needs cargo-fuzz and
//! minutes. Deterministic: a fixed seed, so a failure reproduces.

use std::path::Path;

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to these parsers: separators, newlines, NUL, a non-UTF-8 lead byte.
const INTERESTING: &[u8] = b",=\n\0 /.:-0123456789\xff\xc3\xa9";

fn seeds(target: &str, builtin: &[&str]) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = builtin.iter().map(|s| s.as_bytes().to_vec()).collect();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        out.extend(rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
    }
    // The fuzzer's crash reproducers, once fixed, stay as regressions here.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/artifacts")
        .join(target);
    if let Ok(rd) = std::fs::read_dir(&artifacts) {
        out.extend(rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
    }
    out
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => v.insert(at, rng.next() as u8),
            3 => v.truncate(at),
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
            5 if !v.is_empty() => {
                v.remove(at.min(v.len() - 1));
            }
            _ => {
                let n = rng.below(64);
                v.splice(at..at, std::iter::repeat_n(b'a', n));
            }
        }
    }
    v
}

/// Runs `check` over every seed and `n` mutants; returns how many inputs it ran.
fn run(target: &str, builtin: &[&str], n: usize, check: fn(&[u8])) -> usize {
    let seeds = seeds(target, builtin);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for s in &seeds {
        check(s);
    }
    for _ in 0..n {
        check(&mutate(&mut rng, &seeds));
    }
    seeds.len() + n
}

#[test]
fn ctl_and_note_parsers_keep_their_properties() {
    let words = [
        "stop",
        "start",
        "waitstop",
        "startstop",
        "hang",
        "nohang",
        "kill",
        "attach",
        "detach",
        "run",
        "step",
        "wait",
        "term\n",
        "usr1",
        "hup",
        "interrupt",
        "sys: breakpoint",
    ];
    let n = run("ctl", &words, 200_000, crate::control::words::fuzz_check);
    assert!(n > 200_000);
    run("note", &words, 50_000, crate::control::words::fuzz_check);
}

#[test]
fn mount_option_parser_keeps_its_properties() {
    let opts = [
        "personality=linux,cgroup=/system.slice,umask=027,nolinux",
        "pid=42",
        "personality=plan9,noallow_other",
        "rw,nosuid,nodev,defaults",
        "cgroup=a/b",
    ];
    run(
        "mount_options",
        &opts,
        200_000,
        crate::fs::options::fuzz_check,
    );
}

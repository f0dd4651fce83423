//! psutil's own test suite on the Linux view: the five files of psutil's tests that read /proc
//! (`test_linux.py`, `test_process.py`, `test_system.py`, `test_posix.py`,
//! `test_process_all.py`, from the sdist of the installed psutil, which `cargo xtask setup`
//! fetches) run twice with pytest, once on the kernel's /proc and once with a default view
//! (`bpfproc agent --mount DIR`) bind-mounted over /proc in a private mount namespace. A test
//! that passes on the kernel's /proc but fails, errors or is skipped on the view is a view-only
//! failure; each must be listed in `psutil-view-failures.txt` beside this file with its reason.
//! A ratchet: an unlisted one fails the test (a regression, or a new gap), and a listed one
//! that passes is reported so that its line can go. Tests that fail on the kernel's /proc too
//! (this machine: no logged-in users, …) say nothing about the view and are left out.
//! Needs root (CI runs as root): `#[ignore]`d otherwise.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::Agent;

/// The psutil release whose tests run; `cargo xtask setup` installs it and unpacks its tests
/// (keep in sync with PSUTIL_VERSION in xtask/src/setup.rs).
const PSUTIL_VERSION: &str = "7.2.2";
const FILES: [&str; 5] = [
    "test_linux.py",
    "test_process.py",
    "test_system.py",
    "test_posix.py",
    "test_process_all.py",
];
/// pytest-timeout's bound on one test (a test that waits forever for something the view lacks
/// fails after it instead of stalling the run).
const TEST_TIMEOUT_SECS: u32 = 60;
/// The bound on one whole pytest run (each takes about 20 s here, on 2 cores).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn known_failures_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/psutil-view-failures.txt")
}

/// Where `cargo xtask setup` unpacked psutil's `tests/` (with an empty `pytest.ini` beside it).
fn psutil_tests() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/psutil-tests")
        .join(format!("psutil-{PSUTIL_VERSION}"));
    assert!(
        dir.join("pytest.ini").exists() && dir.join("tests/test_linux.py").exists(),
        "psutil {PSUTIL_VERSION}'s tests are not at {}: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

/// What the test prints for a person (timings, lines of the list that can go) goes to stderr
/// directly, past libtest's capture, so that it shows when the test passes too.
fn report(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "psutil: {text}");
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

fn name(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Passed) => "passed",
        Some(Outcome::Failed) => "failed",
        Some(Outcome::Skipped) => "skipped",
        None => "not run",
    }
}

/// One pytest run: each test's outcome and, for a failure or skip, its first message line.
struct Run {
    label: &'static str,
    tests: BTreeMap<String, (Outcome, String)>,
    elapsed: Duration,
    summary: String,
    log: PathBuf,
}

impl Run {
    fn outcome(&self, id: &str) -> Option<Outcome> {
        self.tests.get(id).map(|(o, _)| *o)
    }

    fn message(&self, id: &str) -> &str {
        self.tests.get(id).map_or("", |(_, m)| m.as_str())
    }
}

/// Runs the five files with pytest in a fresh `python3` in a private mount namespace, with
/// `view` bound over /proc first if given (psutil decides at import what /proc offers).
fn pytest(label: &'static str, scratch: &Path, view: Option<&Path>) -> Run {
    let dir = psutil_tests();
    let xml = scratch.join(format!("psutil-{label}.xml"));
    let log = scratch.join(format!("psutil-{label}.log"));
    let _ = std::fs::remove_file(&xml);
    let keep = view.map_or(String::new(), |v| v.display().to_string());
    // Other agents' FUSE mounts on this machine (other tests, other people) are detached in
    // the namespace: a dead one answers ENOTCONN to test_disk_partitions's stat of every mount
    // point, on whichever of the two runs happened to see it.
    let mut script = format!(
        "for m in $(awk '$3 ~ /^fuse(\\.|$)/ && $2 != \"{keep}\" {{ print $2 }}' /proc/self/mounts); \
         do umount -l \"$m\" 2>/dev/null; done; "
    );
    if let Some(view) = view {
        script += &format!("mount --bind {} /proc && ", view.display());
    }
    script += "exec python3 -m pytest -p no:cacheprovider -q -rfEs \"$@\"";
    let out = std::fs::File::create(&log).expect("log file");
    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(format!("--timeout={TEST_TIMEOUT_SECS}"))
        .arg(format!("--junitxml={}", xml.display()))
        .args(FILES.iter().map(|f| format!("tests/{f}")))
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // Wide summary lines in the log.
        .env("COLUMNS", "200")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("unshare");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait pytest") {
            break status;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pytest on {label} ran over {RUN_TIMEOUT:?}; its output is in {}:\n{}",
                log.display(),
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = start.elapsed();
    // 0: all passed, 1: some failed; anything else (usage, internal error, no tests) means
    // the run itself went wrong.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "pytest on {label} exited with {status}; its output is in {}:\n{}",
        log.display(),
        tail(&log)
    );
    let tests = junit_outcomes(&xml);
    assert!(
        tests.len() > 200,
        "pytest on {label} reported only {} tests; its output is in {}:\n{}",
        tests.len(),
        log.display(),
        tail(&log)
    );
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains(" in ") && (l.contains("passed") || l.contains("failed")))
        .unwrap_or("")
        .trim()
        .to_string();
    Run {
        label,
        tests,
        elapsed,
        summary,
        log,
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// pytest's JUnit XML as `outcome<TAB>test id<TAB>message` lines, read by Python's own XML
/// parser. The test id is the node id less the `tests/` prefix
/// (`test_linux.py::TestProcess::test_memory_full_info`); a test with several failures (one per
/// failed subtest) is one failed test.
const JUNIT_TO_LINES: &str = "\
import sys, xml.etree.ElementTree as ET
for case in ET.parse(sys.argv[1]).iter('testcase'):
    parts = case.get('classname', '').split('.')
    name = case.get('name', '')
    if len(parts) >= 2 and parts[0] == 'tests':
        test_id = '::'.join([parts[1] + '.py', *parts[2:], name])
    else:
        test_id = name
    outcome, message = 'passed', ''
    for kind in ('failure', 'error', 'skipped'):
        found = case.find(kind)
        if found is not None:
            outcome = 'skipped' if kind == 'skipped' else 'failed'
            message = ' '.join((found.get('message') or '').split())[:200]
            break
    print(outcome, test_id, message, sep='\\t')
";

fn junit_outcomes(xml: &Path) -> BTreeMap<String, (Outcome, String)> {
    let out = Command::new("python3")
        .args(["-c", JUNIT_TO_LINES])
        .arg(xml)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading {}: {}",
        xml.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.splitn(3, '\t');
        let (Some(outcome), Some(id)) = (fields.next(), fields.next()) else {
            continue;
        };
        let outcome = match outcome {
            "passed" => Outcome::Passed,
            "skipped" => Outcome::Skipped,
            _ => Outcome::Failed,
        };
        let message = fields.next().unwrap_or("").to_string();
        // A test id seen twice (never, in practice) keeps its worse outcome.
        let entry = tests
            .entry(id.to_string())
            .or_insert((outcome, message.clone()));
        if outcome == Outcome::Failed && entry.0 != Outcome::Failed {
            *entry = (outcome, message);
        }
    }
    tests
}

/// The known view-only failures: `test id  reason` per line, `#` comments. A reason that
/// says `flaky` marks a test that fails on the view only some of the time.
fn known_failures() -> BTreeMap<String, String> {
    let path = known_failures_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut known = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let reason = reason.trim();
        assert!(
            !reason.is_empty(),
            "{}:{}: `{id}` has no reason",
            path.display(),
            n + 1
        );
        assert!(
            known.insert(id.to_string(), reason.to_string()).is_none(),
            "{}:{}: `{id}` is listed twice",
            path.display(),
            n + 1
        );
    }
    known
}

/// The tests that the view fails and the kernel's /proc does not: failed or errored on the view
/// and not on the kernel, or skipped on the view where the kernel ran them and they passed
/// (psutil skips what it finds missing at import, e.g. memory_maps without smaps).
fn view_only(kernel: &Run, view: &Run) -> BTreeSet<String> {
    let ids: BTreeSet<&String> = kernel.tests.keys().chain(view.tests.keys()).collect();
    ids.into_iter()
        .filter(|id| {
            match (kernel.outcome(id), view.outcome(id)) {
                (Some(Outcome::Failed), _) => false,
                (_, Some(Outcome::Failed)) => true,
                (Some(Outcome::Passed), Some(Outcome::Skipped)) => true,
                // Run on the kernel's /proc, not collected at all on the view.
                (Some(Outcome::Passed), None) => true,
                _ => false,
            }
        })
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE, unshares a mount namespace"]
fn psutils_own_tests_pass_on_the_view_but_for_the_known_failures() {
    let known = known_failures();
    let version = Command::new("python3")
        .args([
            "-c",
            "import psutil, pytest_timeout; print(psutil.__version__)",
        ])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        PSUTIL_VERSION,
        "the installed psutil (with pytest-timeout) must be the one whose tests run: run \
         `cargo xtask setup` ({})",
        String::from_utf8_lossy(&version.stderr)
    );
    // The default view: no options.
    let (agent, view) = Agent::start_with_view(&[]);
    let kernel = pytest("kernel", &agent.dir, None);
    let ours = pytest("view", &agent.dir, Some(&view));
    for run in [&kernel, &ours] {
        report(&format!(
            "on the {}'s /proc: {:.1} s, {} (output in {})",
            run.label,
            run.elapsed.as_secs_f64(),
            run.summary,
            run.log.display()
        ));
    }

    let failing_on_both: Vec<&String> = kernel
        .tests
        .iter()
        .filter(|(id, (o, _))| *o == Outcome::Failed && ours.outcome(id) == Some(Outcome::Failed))
        .map(|(id, _)| id)
        .collect();
    for id in failing_on_both {
        // Not a view-only failure, but a different reason on the view may hide one.
        let (k, v) = (kernel.message(id), ours.message(id));
        if k == v {
            report(&format!("{id} fails on both, here: {k}"));
        } else {
            report(&format!(
                "{id} fails on both: on the kernel's /proc: {k}; on the view: {v}"
            ));
        }
    }

    let only = view_only(&kernel, &ours);
    for (id, reason) in &known {
        if only.contains(id) {
            continue;
        }
        let now = match (kernel.outcome(id), ours.outcome(id)) {
            (None, None) => "was not run (renamed or removed?)".to_string(),
            (Some(Outcome::Failed), _) => "failed on the kernel's /proc too, this time".into(),
            (kernel, view) => format!(
                "{} on the view, {} on the kernel's /proc",
                name(view),
                name(kernel)
            ),
        };
        if reason.contains("flaky") {
            report(&format!("{id} (listed as flaky) {now}"));
        } else {
            report(&format!(
                "{id} {now}: remove it from {}",
                known_failures_file().display()
            ));
        }
    }

    let unlisted: Vec<String> = only
        .iter()
        .filter(|id| !known.contains_key(*id))
        .map(|id| {
            format!(
                "{id}  ({} on the view) {}",
                name(ours.outcome(id)),
                ours.message(id)
            )
        })
        .collect();
    report(&format!(
        "{} view-only failures, {} of them unlisted",
        only.len(),
        unlisted.len()
    ));
    assert!(
        unlisted.is_empty(),
        "psutil tests that pass on the kernel's /proc but not on the view, and are not in {} \
         (outputs: {} and {}):\n{}",
        known_failures_file().display(),
        kernel.log.display(),
        ours.log.display(),
        unlisted.join("\n")
    );
    drop(agent);
}

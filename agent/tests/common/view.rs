//! Helpers for the tests of the FUSE views, shared by more than one test file.

use std::path::{Path, PathBuf};

use super::Agent;

/// Mounts a view with `options` through the CLI at a new directory of the agent's.
pub fn mount_view(agent: &Agent, name: &str, options: &str) -> PathBuf {
    let view = agent.dir.join(name);
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", "-o", options, view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    view
}

/// The FUSE requests of kind `op` the agent has answered, over all its views.
pub fn fuse_requests(agent: &Agent, op: &str) -> u64 {
    agent.json("/v1/stats")["fuse_requests_by_op"][op]
        .as_u64()
        .unwrap_or(0)
}

/// The FUSE requests the io_uring queues of the agent's `-o uring` views have carried.
pub fn uring_requests(agent: &Agent) -> u64 {
    agent.json("/v1/stats")["fuse_uring_requests"]
        .as_u64()
        .unwrap()
}

/// Whether this kernel has FUSE over io_uring; says so when it has not, for the test that
/// asked to skip.
pub fn has_fuse_uring() -> bool {
    let has = Path::new("/sys/module/fuse/parameters/enable_uring").exists();
    if !has {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)");
    }
    has
}

pub fn mounted_agent() -> (Agent, PathBuf) {
    // Numbers at most 1 ms old: the comparisons read the kernel just before and after the view,
    // and a snapshot taken before the first kernel read could legitimately differ from both.
    Agent::start_with_view(&["--max-staleness-ms", "1"])
}

pub fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

pub fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(data)
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

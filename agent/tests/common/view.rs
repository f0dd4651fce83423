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

//! The Plan 9 personality (proc(3)) through a real mount: the files of a process directory,
//! the fixed-width status, and control through its ctl. Needs root (CI runs as root):
//! `#[ignore]`d otherwise.

mod common;

use std::process::Command;

use common::{Agent, eventually, proc_stat, view::write_file};

#[test]
#[ignore = "needs root: loads BPF programs, mounts FUSE"]
fn plan9_personality_serves_proc3_files() {
    let agent = Agent::start();
    let view = agent.dir.join("plan9");
    std::fs::create_dir_all(&view).unwrap();
    let out = agent.cli(&["mount", "-o", "personality=plan9", view.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    eventually(5, "exec", || {
        proc_stat(pid).filter(|(c, _)| c == "sleep").map(drop)
    });
    eventually(5, "child in view", || {
        std::fs::metadata(view.join(pid.to_string())).ok()
    });

    // The root holds process directories and nothing else.
    let names: Vec<String> = std::fs::read_dir(&view)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.parse::<u32>().is_ok()), "{names:?}");
    let mut files: Vec<String> = std::fs::read_dir(view.join(pid.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ctl", "mem", "note", "noteid", "notepg", "proc", "segment", "status", "text", "wait"
        ]
    );

    // status: name and user in 28 columns, state in 12, then seven 12-column numbers. (Right
    // after exec the process may still be running; wait for it to sleep.)
    let status = eventually(5, "asleep", || {
        let s = std::fs::read(view.join(format!("{pid}/status"))).ok()?;
        String::from_utf8_lossy(&s).contains("Wakeme").then_some(s)
    });
    assert_eq!(
        status.len(),
        28 + 28 + 12 + 7 * 12,
        "{:?}",
        String::from_utf8_lossy(&status)
    );
    let text = String::from_utf8(status).unwrap();
    assert!(
        text.starts_with(&format!("{:<27} {:<27} {:<11} ", "sleep", "root", "Wakeme")),
        "{text:?}"
    );
    let segment = std::fs::read_to_string(view.join(format!("{pid}/segment"))).unwrap();
    assert!(segment.lines().any(|l| l.starts_with("Text")), "{segment}");
    assert!(segment.lines().any(|l| l.starts_with("Stack")), "{segment}");
    assert!(
        std::fs::read_link(view.join(format!("{pid}/text")))
            .unwrap()
            .ends_with("sleep"),
        "text is the executable"
    );
    // Plan 9 control through the personality's ctl.
    write_file(&view.join(format!("{pid}/ctl")), b"stop").unwrap();
    // State numbers are at most the staleness bound (100 ms) old.
    eventually(5, "Stopped", || {
        let text = std::fs::read_to_string(view.join(format!("{pid}/status"))).ok()?;
        text[56..].starts_with("Stopped").then_some(())
    });
    write_file(&view.join(format!("{pid}/ctl")), b"kill").unwrap();
    child.wait().unwrap();
    assert!(
        agent
            .cli(&["umount", view.to_str().unwrap()])
            .status
            .success()
    );
}

//! Past one machine: a process in a Kubernetes pod's cgroup carries the pod and the container
//! in JSON, on its exit record and in the pod's metrics group. Needs root (BPF, cgroups).

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command},
};

use common::{Agent, cgroup2_root, eventually, kill};
use serde_json::Value;

/// A synthetic pod's container cgroup, as the kubelet's systemd driver and containerd name
/// them, under the cgroup v2 root; removed (with whatever is left in it moved out) on drop.
struct PodCgroup {
    uid: String,
    container_id: String,
    /// The directories made, outermost first.
    made: Vec<PathBuf>,
    scope: PathBuf,
}

impl PodCgroup {
    fn new() -> PodCgroup {
        let seed = (std::process::id() as u64 * 1_000_003)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64;
        let hex = format!("{seed:016x}");
        // 8-4-4-4-12 hex digits, as the API server writes a pod's uid.
        let uid = format!(
            "{}-{}-{}-4000-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[4..16]
        );
        let container_id = hex.repeat(4);
        let root = cgroup2_root();
        let mut dir = root.clone();
        let mut made = Vec::new();
        for part in [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        PodCgroup {
            uid,
            container_id,
            made,
            scope: dir,
        }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.scope.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let root = cgroup2_root();
        if let Ok(left) = std::fs::read_to_string(self.scope.join("cgroup.procs")) {
            for pid in left.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().expect("sleep")
}

fn pids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs, makes cgroups"]
fn a_process_in_a_pod_cgroup_carries_its_pod_and_container() {
    let pod = PodCgroup::new();
    let agent = Agent::start_with(&["--metrics-group-by", "pod"]);
    let mut outside = sleeper();
    let mut inside = sleeper();
    let pid = inside.id();
    pod.enter(pid);
    let me = eventually(10, "the pod uid in the process's JSON", || {
        let v = agent.json(&format!("/v1/processes/{pid}"));
        (v["pod_uid"] == pod.uid.as_str()).then_some(v)
    });
    assert_eq!(me["container_id"], pod.container_id.as_str());
    assert_eq!(me["container_runtime"], "containerd");
    assert!(
        me["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("cri-containerd-{}.scope", pod.container_id))),
        "{me}"
    );
    let there = agent.json(&format!("/v1/processes/{}", outside.id()));
    assert_eq!(there["pod_uid"], Value::Null);
    assert_eq!(there["container_id"], Value::Null);

    // The filters find it and only it (once the listing's snapshot, up to the staleness bound
    // old, has the move).
    for filter in [
        format!("pod_uid={}", pod.uid),
        format!("container_id={}", &pod.container_id[..12]),
        format!("container_id={}", pod.container_id),
    ] {
        eventually(10, &filter, || {
            let found = pids(&agent.json(&format!("/v1/processes?{filter}")));
            (!found.is_empty()).then(|| assert_eq!(found, [u64::from(pid)], "{filter}"))
        });
    }
    let (status, _) = agent.get("/v1/processes?container_id=abc");
    assert_eq!(status, 400, "a too-short id prefix is refused");

    // Grouped by pod: the pod's group has the one process; processes outside pods are not
    // grouped at all.
    let metrics = String::from_utf8(agent.get("/metrics").1).expect("UTF-8");
    let series = format!("bpfproc_group_processes{{group=\"{}\"}} 1", pod.uid);
    assert!(
        metrics.lines().any(|l| l == series),
        "no {series} in\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("bpfproc_group_processes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!metrics.contains("bpfproc_group_processes{group=\"sleep\"}"));

    // Its exit record keeps the pod and the container.
    kill(pid, 15);
    inside.wait().expect("wait");
    let gone = eventually(10, "the exit in /v1/exited", || {
        agent
            .json(&format!("/v1/exited?pod_uid={}", pod.uid))
            .as_array()?
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
    });
    assert_eq!(gone["signal"], 15);
    assert_eq!(gone["container_id"], pod.container_id.as_str());
    kill(outside.id(), 9);
    outside.wait().expect("wait");
}

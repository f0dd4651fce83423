//! The cgroup v2 hierarchy: where it is mounted, its directories by id, and the Kubernetes pod
//! and container a cgroup path names. A cgroup's id, as BPF reports it (`kernfs_node.id`), is the
//! inode number of its directory.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), from this process's mount table.
pub fn root() -> std::io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_point(&info).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup v2 hierarchy is mounted",
        )
    })
}

/// The cgroup2 mount point in a mountinfo text (the fifth field of the line whose file system
/// type, after the ` - `, is cgroup2).
fn mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The directory of a cgroup given as a path inside the hierarchy or one relative to its root;
/// NotFound when there is no such cgroup.
pub fn dir(path: &Path) -> std::io::Result<PathBuf> {
    let base = root()?;
    let dir = if path.starts_with(&base) {
        path.to_path_buf()
    } else {
        base.join(path.strip_prefix("/").unwrap_or(path))
    };
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cgroup {} does not exist", dir.display()),
        ));
    }
    Ok(dir)
}

/// The ids of `dir` and every cgroup below it.
pub fn subtree_ids(dir: &Path) -> HashSet<u64> {
    let mut ids = HashSet::new();
    walk(dir, &mut |_, id| {
        ids.insert(id);
    });
    ids
}

/// Every cgroup below `root` (itself included) by id, as its path from `root` (`/a/b`).
pub fn paths_by_id(root: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    walk(root, &mut |dir, id| {
        let rel = dir.strip_prefix(root).unwrap_or(dir);
        out.insert(id, format!("/{}", rel.display()));
    });
    out
}

/// The path (from the hierarchy's root, `/a/b`) of the cgroup with id `id`, or `None` when
/// no cgroup of the mounted hierarchy has it (id 0: not read yet). One cache for the whole agent:
/// an id not in it makes a walk of the hierarchy, once per id (an id still unknown after a walk
/// is remembered as such), so a new container's cgroup is found the first time it is asked for
/// and a vanished one never makes a walk again. Cgroup ids are never reused while the system
/// runs, so a path once learnt stays right after its directory is removed, which keeps exited
/// processes' paths.
pub fn path_of(id: u64) -> Option<Arc<str>> {
    static CACHE: Mutex<Option<PathCache>> = Mutex::new(None);
    if id == 0 {
        return None;
    }
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(|| PathCache {
        root: root().ok(),
        paths: HashMap::new(),
        unknown: HashSet::new(),
    });
    cache.get(id)
}

/// At most this many ids are remembered (paths and unknowns each); past it the cache starts
/// afresh, so pod churn cannot grow it without bound.
const PATH_CACHE_MAX: usize = 1 << 16;

struct PathCache {
    root: Option<PathBuf>,
    paths: HashMap<u64, Arc<str>>,
    unknown: HashSet<u64>,
}

impl PathCache {
    fn get(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self.unknown.contains(&id) {
            return None;
        }
        let root = self.root.as_ref()?;
        if self.paths.len() > PATH_CACHE_MAX {
            self.paths.clear();
        }
        if self.unknown.len() > PATH_CACHE_MAX {
            self.unknown.clear();
        }
        for (i, p) in paths_by_id(root) {
            self.paths.entry(i).or_insert_with(|| p.into());
        }
        let found = self.paths.get(&id).cloned();
        if found.is_none() {
            self.unknown.insert(id);
        }
        found
    }
}

/// A container runtime, as its cgroup's name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

/// The Kubernetes pod and the container a cgroup path names (either may be missing: a pod's own
/// cgroup has no container, a plain `docker run` has no pod).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// The pod's uid with dashes, as the API server spells it.
    pub pod_uid: Option<String>,
    /// The container's full id (64 hex digits for the CRI runtimes and Docker).
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
}

/// The pod and container of a cgroup v2 path, for the kubelet's two cgroup drivers and the
/// runtimes' scopes: `…/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope` (systemd
/// driver: the uid's dashes are underscores), `/kubepods/<qos>/pod<uid>/<id>` (cgroupfs
/// driver), `crio-<id>.scope`, `docker-<id>.scope`, `/docker/<id>`. `None` when the path names
/// neither a pod nor a container. Pure: the path is all it reads.
pub fn container(path: &str) -> Option<Container> {
    let mut out = Container::default();
    let mut in_kubepods = false;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "kubepods" || part.starts_with("kubepods-") || part == "kubepods.slice" {
            in_kubepods = true;
        }
        if let Some(uid) = pod_uid(part) {
            out.pod_uid = Some(uid);
            continue;
        }
        if let Some((id, runtime)) = scope_id(part) {
            out.container_id = Some(id.to_owned());
            out.runtime = runtime.or(out.runtime);
            continue;
        }
        // The cgroupfs driver names a container's cgroup by its bare id, below the pod's.
        if (out.pod_uid.is_some() || in_kubepods) && is_container_id(part) {
            out.container_id = Some(part.to_owned());
        }
    }
    // `/docker/<id>`: Docker's own cgroupfs layout.
    if out.container_id.is_none()
        && let Some(rest) = path.split("/docker/").nth(1)
        && let Some(id) = rest.split('/').next().filter(|id| is_container_id(id))
    {
        out.container_id = Some(id.to_owned());
        out.runtime = Some(Runtime::Docker);
    }
    (out.pod_uid.is_some() || out.container_id.is_some()).then_some(out)
}

/// `kubepods-besteffort-pod<uid>.slice` (systemd, `_` for `-`) or `pod<uid>` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => part.strip_prefix("pod")?.to_owned(),
    };
    is_uid(&uid).then_some(uid)
}

/// A UUID as the API server writes a pod's uid: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let lens: Vec<usize> = s.split('-').map(str::len).collect();
    lens == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// A container id: 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<runtime>-<id>.scope` (with `cri-containerd`, `crio`, `docker`; `crio-conmon-` is the
/// monitor beside a container, not the container).
fn scope_id(part: &str) -> Option<(&str, Option<Runtime>)> {
    let name = part.strip_suffix(".scope")?;
    let (id, runtime) = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("docker-", Runtime::Docker),
    ]
    .into_iter()
    .find_map(|(prefix, r)| Some((name.strip_prefix(prefix)?, r)))?;
    is_container_id(id).then_some((id, Some(runtime)))
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    if let Ok(md) = std::fs::metadata(dir) {
        f(dir, md.ino());
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_line_gives_the_mount_point() {
        let info = "25 1 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                    26 1 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_point(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    const ID: &str = "4a3f1b2c5d6e7f80912a3b4c5d6e7f80912a3b4c5d6e7f80912a3b4c5d6e7f80";
    const UID: &str = "0f5a1b2c-3d4e-5f60-7182-93a4b5c6d7e8";

    fn both(uid: &str, id: &str, runtime: Runtime) -> Option<Container> {
        Some(Container {
            pod_uid: Some(uid.into()),
            container_id: Some(id.into()),
            runtime: Some(runtime),
        })
    }

    #[test]
    fn systemd_driver_paths_name_pod_and_container() {
        let uid_ = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(container(&path), both(UID, ID, Runtime::Containerd));
        // Guaranteed pods sit directly under kubepods.slice; CRI-O names its scopes crio-.
        let path = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope");
        assert_eq!(container(&path), both(UID, ID, Runtime::Crio));
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ID}.scope"
        );
        assert_eq!(container(&path), both(UID, ID, Runtime::Docker));
        // The pod's own cgroup: a pod, no container.
        let pod = container(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
        ))
        .unwrap();
        assert_eq!(
            (pod.pod_uid.as_deref(), pod.container_id),
            (Some(UID), None)
        );
        // CRI-O's monitor process lives beside the container, not in it.
        let conmon = container(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(conmon.container_id, None);
    }

    #[test]
    fn cgroupfs_driver_paths_name_pod_and_container() {
        let c = container(&format!("/kubepods/besteffort/pod{UID}/{ID}")).unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.container_id.as_deref(), Some(ID));
        assert_eq!(c.runtime, None, "the bare id does not say which runtime");
        let c = container(&format!("/kubepods/pod{UID}/{ID}")).unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn plain_docker_containers_have_no_pod() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
        ] {
            let c = container(&path).unwrap();
            assert_eq!(c.pod_uid, None);
            assert_eq!(c.container_id.as_deref(), Some(ID));
            assert_eq!(c.runtime, Some(Runtime::Docker), "{path}");
        }
    }

    #[test]
    fn paths_that_name_no_pod_or_container() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/containerd.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
            // Not a uid, not a 64-digit id.
            "/kubepods/besteffort/podnotauid/abc",
            "/system.slice/docker-1234.scope",
        ] {
            assert_eq!(container(path), None, "{path}");
        }
    }
}

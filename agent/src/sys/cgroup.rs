//! The cgroup v2 hierarchy: where it is mounted, and its directories by id. A cgroup's id, as
//! BPF reports it (`kernfs_node.id`), is the inode number of its directory.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
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
}

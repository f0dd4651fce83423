//! The nodes of subtrees the view serves from the kernel's own /proc: a process's directories
//! the table has no data for (`fdinfo/`, `ns/`, `net/`, `attr/`, `map_files/`, …) and the root's
//! host-wide entries the view has no row for (`sys/`, `irq/`, `buddyinfo`, …). Their names are
//! the kernel's, found on lookup, so they get inode numbers from this table rather than from
//! the encoding of `tree::Node`. A process's nodes carry its start time: a reused pid never
//! reaches the previous process's subtree.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

/// Where a kernel node is: under `/proc/PID` (`pid` > 0, with its start time) or under `/proc`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KPath {
    pub pid: u32,
    pub start: u64,
    /// Relative to `/proc/PID` (or `/proc`), without a leading slash.
    pub rel: String,
}

impl KPath {
    pub fn host(&self) -> PathBuf {
        if self.pid == 0 {
            PathBuf::from(format!("/proc/{}", self.rel))
        } else {
            PathBuf::from(format!("/proc/{}/{}", self.pid, self.rel))
        }
    }

    pub fn child(&self, name: &str) -> KPath {
        KPath {
            rel: format!("{}/{name}", self.rel),
            ..self.clone()
        }
    }
}

/// Nodes kept at most; past it the table starts afresh (an inode the kernel still holds then
/// answers ENOENT and is looked up again by name). A `find` over every process's `net/` is a
/// few hundred thousand.
const KEPT: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Arc<KPath>>,
    by_path: HashMap<Arc<KPath>, u64>,
    next: u64,
}

#[derive(Default)]
pub struct KernelTree {
    inner: Mutex<Inner>,
}

impl KernelTree {
    /// The node id of `path`, the same id each time while it is kept.
    pub fn id(&self, path: KPath) -> u64 {
        let Ok(mut t) = self.inner.lock() else {
            return 0;
        };
        if let Some(&id) = t.by_path.get(&path) {
            return id;
        }
        if t.by_id.len() >= KEPT {
            t.by_id.clear();
            t.by_path.clear();
        }
        t.next += 1;
        let id = t.next;
        let path = Arc::new(path);
        t.by_id.insert(id, path.clone());
        t.by_path.insert(path, id);
        id
    }

    pub fn path(&self, id: u64) -> Option<Arc<KPath>> {
        self.inner.lock().ok()?.by_id.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_keeps_its_id_and_children_extend_it() {
        let t = KernelTree::default();
        let fdinfo = KPath {
            pid: 42,
            start: 7,
            rel: "fdinfo".into(),
        };
        let a = t.id(fdinfo.child("3"));
        assert_eq!(t.id(fdinfo.child("3")), a);
        assert_ne!(t.id(fdinfo.child("4")), a);
        let p = t.path(a).unwrap();
        assert_eq!(p.host(), PathBuf::from("/proc/42/fdinfo/3"));
        // Another process at the same pid is another node.
        let reused = KPath { start: 8, ..fdinfo };
        assert_ne!(t.id(reused.child("3")), a);
        let root = KPath {
            pid: 0,
            start: 0,
            rel: "sys".into(),
        };
        assert_eq!(
            root.child("kernel").host(),
            PathBuf::from("/proc/sys/kernel")
        );
    }
}

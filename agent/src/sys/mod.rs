//! The bottom layer: thin, safe wrappers over what the host offers (clocks, capabilities, user names, cgroups,
//! namespaces, pidfds, descriptors kept across restarts),
//! importing nothing of the agent's.

pub mod cgroup;
pub mod clock;
pub mod fdstore;
pub mod ns;
pub mod pidfd;
pub mod privs;
pub mod users;

/// The page size, read once (`sysconf(_SC_PAGESIZE)`).
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(
        || match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
            Ok(Some(page)) if page > 0 => page as u64,
            _ => 4096,
        },
    )
}

//! User and group names, through the C library's lookup (NSS: /etc/passwd, LDAP, sssd, systemd-userdb…),
//! as `ps` and `ls` resolve them, so every view, group and client agrees for every kind of user.
//! Cached for the process's life: a scrape or a `ps` asks for the same few uids thousands of
//! times, and an NSS lookup can be a network round trip. A uid with no name is looked up again
//! after a minute, since a user may be added meanwhile.

use nix::unistd::{Group, Uid, User};
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

const MISS_TTL: Duration = Duration::from_secs(60);

type Cache = HashMap<u32, (Option<String>, Instant)>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The user name of `uid`, or `None` when the user database has none.
pub fn name(uid: u32) -> Option<String> {
    if let Ok(c) = cache().lock()
        && let Some((name, at)) = c.get(&uid)
        && (name.is_some() || at.elapsed() < MISS_TTL)
    {
        return name.clone();
    }
    let found = lookup(uid);
    if let Ok(mut c) = cache().lock() {
        c.insert(uid, (found.clone(), Instant::now()));
    }
    found
}

/// The user name of `uid`, or the number when there is none (as `ps` shows it).
pub fn name_or_number(uid: u32) -> String {
    name(uid).unwrap_or_else(|| uid.to_string())
}

/// The uid of a user name, or of a number given as one.
pub fn uid(user: &str) -> Option<u32> {
    if let Ok(n) = user.parse() {
        return Some(n);
    }
    Some(User::from_name(user).ok()??.uid.as_raw())
}

/// The gid of a group name (not cached: asked for once, at start-up).
pub fn gid(group: &str) -> Option<u32> {
    Some(Group::from_name(group).ok()??.gid.as_raw())
}

fn lookup(uid: u32) -> Option<String> {
    // getpwuid_r, its buffer grown while the entry does not fit.
    let user = User::from_uid(Uid::from_raw(uid)).ok()??;
    (!user.name.is_empty()).then_some(user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_an_unknown_uid_is_its_number() {
        assert_eq!(name(0).as_deref(), Some("root"));
        assert_eq!(name_or_number(4_000_000_000), "4000000000");
        assert_eq!(uid("root"), Some(0));
        assert_eq!(uid("1234"), Some(1234));
        assert_eq!(uid("no-such-user-here"), None);
        assert_eq!(gid("root"), Some(0));
        assert_eq!(gid("no-such-group-here"), None);
    }
}

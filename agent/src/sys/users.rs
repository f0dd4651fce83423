//! User names, through the C library's lookup (NSS: /etc/passwd, LDAP, sssd, systemd-userdb…),
//! as `ps` and `ls` resolve them, so every view, group and client agrees for every kind of user.
//! Cached for the process's life: a scrape or a `ps` asks for the same few uids thousands of
//! times, and an NSS lookup can be a network round trip. A uid with no name is looked up again
//! after a minute, since a user may be added meanwhile.

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
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
    let c_name = CString::new(user).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes the strings into buf,
    // which outlives every use of the pointers into it.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut res,
        )
    };
    (rc == 0 && !res.is_null()).then_some(pw.pw_uid)
}

fn lookup(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r writes the strings into buf,
    // which outlives every use of the pointers into it.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res) };
    if rc != 0 || res.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
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
    }
}

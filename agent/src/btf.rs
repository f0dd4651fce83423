//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust BPF programs have no CO-RE relocations, so the layout of `task_struct` and friends is
//! resolved here and handed to the programs as a read-only global.
//!
//! The reader is our own and minimal: it indexes the type section once and decodes only the
//! structs, unions and modifiers a path walks through. A general BTF library decoded and named
//! every one of vmlinux's ~150,000 types up front, which was 145 ms of a ~300 ms start-up.

use std::collections::HashMap;

use bpfproc_common::Offsets;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF: {0}")]
    Read(#[from] std::io::Error),
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("bad offset spec {0}")]
    BadSpec(String),
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Split (base-only) BTF as the kernel exposes it: little-endian on every architecture we
/// load on, header, then types, then strings.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset of type id `i + 1`.
    types: Vec<usize>,
    /// Struct and union names to their ids (the first of each name, as the kernel's own lookups).
    composites: HashMap<Box<str>, u32>,
}

/// One decoded `struct btf_type` header.
#[derive(Clone, Copy)]
struct Ty {
    at: usize,
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

impl Btf {
    pub fn from_file(path: &str) -> Result<Self, BtfError> {
        Self::parse(std::fs::read(path)?)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if u16_at(0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (or not little-endian)"));
        }
        let word = |o: usize| {
            le32(&data, o)
                .map(|w| w as usize)
                .ok_or(BtfError::Malformed("short header"))
        };
        let hdr = word(4)?;
        let (type_off, type_len, str_off, str_len) = (word(8)?, word(12)?, word(16)?, word(20)?);
        let types_start = hdr + type_off;
        let types_end = types_start + type_len;
        let strings = hdr + str_off..hdr + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(BtfError::Malformed("sections past the end"));
        }
        let mut btf = Btf {
            data,
            strings,
            types: Vec::with_capacity(type_len / 16),
            composites: HashMap::new(),
        };
        let mut at = types_start;
        while at < types_end {
            let t = btf.header(at)?;
            let extra = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
                _ => 0,
            };
            btf.types.push(at);
            if (t.kind == KIND_STRUCT || t.kind == KIND_UNION) && t.name != 0 {
                let id = btf.types.len() as u32;
                let name: Box<str> = btf.name(t.name).into();
                btf.composites.entry(name).or_insert(id);
            }
            at += 12 + extra;
        }
        Ok(btf)
    }

    fn word(&self, at: usize) -> Result<u32, BtfError> {
        le32(&self.data, at).ok_or(BtfError::Malformed("type past the end"))
    }

    fn header(&self, at: usize) -> Result<Ty, BtfError> {
        let info = self.word(at + 4)?;
        Ok(Ty {
            at,
            name: self.word(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: self.word(at + 8)?,
        })
    }

    fn by_id(&self, id: u32) -> Result<Ty, BtfError> {
        let at = *id
            .checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or(BtfError::Malformed("type id out of range"))?;
        self.header(at)
    }

    fn name(&self, off: u32) -> &str {
        let s = &self.data[self.strings.clone()];
        let rest = s.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Follows typedefs, qualifiers and type tags to the type they name.
    fn strip(&self, mut id: u32) -> Result<Ty, BtfError> {
        for _ in 0..32 {
            let t = self.by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(t),
            }
        }
        Err(BtfError::Malformed("modifier chain too long"))
    }

    /// `(name, type id, bit offset)` of each member of a struct or union.
    fn members(&self, t: Ty) -> impl Iterator<Item = Result<(&str, u32, u32), BtfError>> + '_ {
        (0..t.vlen).map(move |i| {
            let m = t.at + 12 + 12 * i;
            let offset = self.word(m + 8)?;
            let bits = if t.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            Ok((self.name(self.word(m)?), self.word(m + 4)?, bits))
        })
    }
}

fn le32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Resolves every spec in [`Offsets::SPECS`] against `btf`.
pub fn resolve(btf: &Btf) -> Result<Offsets, BtfError> {
    let mut offsets = Offsets::zeroed();
    for (slot, (_, spec)) in offsets.fields_mut().into_iter().zip(Offsets::SPECS) {
        *slot = resolve_spec(btf, spec)?;
    }
    Ok(offsets)
}

/// Offset of per-CPU variable `b` minus that of `a` in the `.data..percpu` section. A real
/// pointer to CPU c's copy of `a` plus this is CPU c's copy of `b`.
pub fn percpu_distance(btf: &Btf, a: &str, b: &str) -> Option<i64> {
    let sec = btf.types.iter().find_map(|&at| {
        let t = btf.header(at).ok()?;
        (t.kind == KIND_DATASEC && btf.name(t.name) == ".data..percpu").then_some(t)
    })?;
    let mut found = (None, None);
    for i in 0..sec.vlen {
        let v = sec.at + 12 + 12 * i;
        let (Ok(var), Ok(offset)) = (btf.word(v), btf.word(v + 4)) else {
            continue;
        };
        let Ok(var) = btf.by_id(var) else { continue };
        match btf.name(var.name) {
            n if n == a => found.0 = Some(i64::from(offset)),
            n if n == b => found.1 = Some(i64::from(offset)),
            _ => {}
        }
    }
    Some(found.1? - found.0?)
}

fn resolve_spec(btf: &Btf, spec: &str) -> Result<u32, BtfError> {
    let (optional, spec) = match spec.strip_prefix('?') {
        Some(rest) => (true, rest),
        None => (false, spec),
    };
    let mut last = None;
    for alt in spec.split('|') {
        match resolve_path(btf, alt) {
            Ok(off) => return Ok(off),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(_) if optional => Ok(u32::MAX),
        Some(e) => Err(e),
        None => Err(BtfError::BadSpec(spec.into())),
    }
}

/// `struct.member.member…` → byte offset; `struct.#size` → size of the struct.
fn resolve_path(btf: &Btf, path: &str) -> Result<u32, BtfError> {
    let mut parts = path.split('.');
    let ty_name = parts.next().ok_or_else(|| BtfError::BadSpec(path.into()))?;
    if ty_name.starts_with('#') {
        return Err(BtfError::BadSpec(path.into()));
    }
    let id = *btf
        .composites
        .get(ty_name)
        .ok_or_else(|| BtfError::NoStruct(ty_name.into()))?;
    let mut ty = Some(btf.by_id(id)?);
    let mut name = ty_name;
    let mut offset = 0u32;
    for member in parts {
        let no_member = || BtfError::NoMember {
            ty: name.into(),
            member: member.into(),
        };
        let current = ty.ok_or_else(no_member)?;
        if member == "#size" {
            return Ok(current.size_or_type);
        }
        let (bits, member_ty) = find_member(btf, current, member)?.ok_or_else(no_member)?;
        offset += bits / 8;
        name = member;
        // A scalar or array ends the path; a further component is then an error.
        let t = btf.strip(member_ty)?;
        ty = matches!(t.kind, KIND_STRUCT | KIND_UNION).then_some(t);
    }
    Ok(offset)
}

/// Looks `name` up among the members, descending into anonymous structs and unions (the kernel
/// wraps many `task_struct` and `mm_struct` fields in them).
fn find_member(btf: &Btf, ty: Ty, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
    for m in btf.members(ty) {
        let (member_name, member_ty, bits) = m?;
        if member_name == name {
            return Ok(Some((bits, member_ty)));
        }
        if member_name.is_empty() {
            let inner = btf.strip(member_ty)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((inner_bits, t)) = find_member(btf, inner, name)?
            {
                return Ok(Some((bits + inner_bits, t)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: `struct outer { int a; union { int b; struct inner c; }; }` with
    /// `struct inner { long x; long y; }`, to check the walk without a kernel.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0long\0inner\0x\0y\0outer\0a\0b\0c\0".to_vec();
        let name = |s: &str| {
            let pat = format!("\0{s}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes), 2: long (8 bytes)
        put(&[name("int"), KIND_INT << 24, 4, 32]);
        put(&[name("long"), KIND_INT << 24, 8, 64]);
        // 3: struct inner { long x; long y; }
        put(&[name("inner"), KIND_STRUCT << 24 | 2, 16]);
        put(&[name("x"), 2, 0, name("y"), 2, 64]);
        // 4: anonymous union { int b; struct inner c; }
        put(&[0, KIND_UNION << 24 | 2, 16]);
        put(&[name("b"), 1, 0, name("c"), 3, 0]);
        // 5: const union (a modifier to strip)
        put(&[0, KIND_CONST << 24, 4]);
        // 6: struct outer { int a; <anon> at 64 bits; }
        put(&[name("outer"), KIND_STRUCT << 24 | 2, 24]);
        put(&[name("a"), 1, 0, 0, 5, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn paths_walk_members_anonymous_unions_and_modifiers() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(resolve_path(&btf, "outer.a").unwrap(), 0);
        assert_eq!(resolve_path(&btf, "outer.b").unwrap(), 8);
        assert_eq!(resolve_path(&btf, "outer.c.y").unwrap(), 16);
        assert_eq!(resolve_path(&btf, "outer.#size").unwrap(), 24);
        assert_eq!(resolve_path(&btf, "inner.#size").unwrap(), 16);
        assert!(matches!(
            resolve_path(&btf, "outer.z"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            resolve_path(&btf, "nosuch.a"),
            Err(BtfError::NoStruct(_))
        ));
        // A scalar ends a path.
        assert!(resolve_path(&btf, "outer.a.x").is_err());
        assert_eq!(resolve_spec(&btf, "outer.z|outer.c.x").unwrap(), 8);
        assert_eq!(resolve_spec(&btf, "?outer.z").unwrap(), u32::MAX);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(vec![]).is_err());
        assert!(Btf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut b = blob();
        b[12] = 0xff; // type_len far past the end
        assert!(Btf::parse(b).is_err());
    }

    #[test]
    fn the_running_kernel_resolves_every_spec() {
        if !std::path::Path::new(VMLINUX).exists() {
            return;
        }
        let btf = Btf::from_file(VMLINUX).unwrap();
        let o = resolve(&btf).unwrap();
        assert!(o.task_pid > 0 && o.task_tgid > o.task_pid - 64);
        assert!(percpu_distance(&btf, "runqueues", "this_cpu_off").is_some());
    }
}

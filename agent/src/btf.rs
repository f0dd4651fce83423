//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust BPF programs have no CO-RE relocations, so the layout of `task_struct` and friends is
//! resolved here and handed to the programs as a read-only global.

use bpfproc_common::Offsets;
use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF: {0}")]
    Read(#[from] btf_rs::Error),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("bad offset spec {0}")]
    BadSpec(String),
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

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
    let sections = btf.resolve_types_by_name(".data..percpu").ok()?;
    let sec = sections.into_iter().find_map(|t| match t {
        Type::Datasec(d) => Some(d),
        _ => None,
    })?;
    let mut found = (None, None);
    for v in &sec.variables {
        let Ok(var) = btf.resolve_chained_type(v) else {
            continue;
        };
        let name = var.as_btf_type().and_then(|t| btf.resolve_name(t).ok());
        match name.as_deref() {
            Some(n) if n == a => found.0 = Some(i64::from(v.offset())),
            Some(n) if n == b => found.1 = Some(i64::from(v.offset())),
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
    let mut ty = Some(find_struct(btf, ty_name)?);
    let mut name = ty_name.to_string();
    let mut offset = 0u32;
    for member in parts {
        let no_member = || BtfError::NoMember {
            ty: name.clone(),
            member: member.into(),
        };
        let current = ty.as_ref().ok_or_else(no_member)?;
        if member == "#size" {
            return Ok(current.size() as u32);
        }
        let (bits, member_ty) = find_member(btf, current, member)?.ok_or_else(no_member)?;
        offset += bits / 8;
        name = member.to_string();
        // A scalar or array ends the path; a further component is then an error.
        ty = match strip(btf, member_ty)? {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        };
    }
    Ok(offset)
}

fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, BtfError> {
    for ty in btf.resolve_types_by_name(name).unwrap_or_default() {
        if let Type::Struct(s) = ty {
            return Ok(s);
        }
    }
    Err(BtfError::NoStruct(name.into()))
}

/// Looks `name` up among the members, descending into anonymous structs and unions (the kernel
/// wraps many `task_struct` and `mm_struct` fields in them).
fn find_member(
    btf: &Btf,
    ty: &btf_rs::Struct,
    name: &str,
) -> Result<Option<(u32, Type)>, BtfError> {
    for m in &ty.members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        if member_name == name {
            return Ok(Some((m.bit_offset(), btf.resolve_chained_type(m)?)));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) =
                strip(btf, btf.resolve_chained_type(m)?)?
            && let Some((bits, t)) = find_member(btf, &inner, name)?
        {
            return Ok(Some((m.bit_offset() + bits, t)));
        }
    }
    Ok(None)
}

/// Skips typedefs and qualifiers.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type, BtfError> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

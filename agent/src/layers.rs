//! The layer rule of `lib.rs`, held by a test: every `crate::` path in a module's code names a
//! module of a lower layer (or the module itself). Test code (`#[cfg(test)] mod tests` at the
//! end of a file) may reach anywhere, as tests build fixtures from any layer.

use std::path::Path;

/// Bottom first. A module may import only from rows above its own.
const LAYERS: &[&[&str]] = &[
    &["sys"],
    &["btf", "procfs"],
    &["kernel"],
    &["table"],
    &["groups"],
    &["state"],
    &["view"],
    &["control"],
    &["fs"],
    &["otlp"],
    &["metrics"],
    &["http", "socket"],
    &["config"],
    &["client", "mount_helper"],
    &["daemon"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// The top-level module a source file belongs to (`fs/fuse/uring.rs` → `fs`); `None` for the
/// crate roots and the test-only modules.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "layers" | "fuzz_corpus")).then(|| name.to_string())
}

/// The code of a file without its trailing test module.
fn without_tests(src: &str) -> &str {
    src.find("#[cfg(test)]\nmod tests")
        .map_or(src, |i| &src[..i])
}

/// Every top-level module named by `crate::…` in `code`: in `use crate::x`, `use crate::{x,
/// y::z}` and inline paths `crate::x::f()`.
fn imports(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // A grouped use: each top-level item of the braces, nested braces skipped.
            let (mut depth, mut item, mut end) = (0usize, String::new(), group.len());
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = j;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || c != '{' {
                    item.push(c);
                }
            }
            out.push(first_segment(&item));
            rest = &group[end..];
        } else {
            out.push(first_segment(after));
            rest = after;
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source directory").flatten() {
        let path = e.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_only_go_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src");
        let Some(module) = module_of(rel) else {
            continue;
        };
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("{module} (from {}) is in no layer", rel.display()));
        let src = std::fs::read_to_string(file).expect("source file");
        for target in imports(without_tests(&src)) {
            if target == module || target == "self" || target == "super" {
                continue;
            }
            match layer_of(&target) {
                Some(l) if l < own => {}
                _ => wrong.push(format!("{} imports crate::{target}", rel.display())),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports against the layer order of lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn grouped_and_inline_imports_are_all_seen() {
    let code = "use crate::{\n    fs::{self, Mounts},\n    state::State,\n    view,\n};\nlet x = crate::sys::clock::boot_ns();";
    assert_eq!(imports(code), ["fs", "state", "view", "sys"]);
    assert_eq!(
        without_tests("fn a() {}\n#[cfg(test)]\nmod tests {\n use crate::daemon;\n}"),
        "fn a() {}\n"
    );
}

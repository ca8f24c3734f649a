//! The crate's layering, as README's "How it is built" states it: every module under
//! `src/` may use the modules of its own layer and of the layers below, never one above,
//! and no two modules use each other. The test reads the sources (plain std, no parser),
//! so a new arrow upwards fails here before it is reviewed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The layers, lowest first; a module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    &["sys"],
    &["fingerprint", "shown", "wire", "congestion"],
    &["ticket", "error"],
    &["nat", "punch", "manifest"],
    &["quic", "tls", "rate_memory"],
    &["stun", "ntp", "portmap", "hops", "relay", "net", "transfer"],
    &["events"],
    &["doctor", "session"],
    &["cli"],
];

/// Arrows the order forbids that the code still has, each with why it is not gone yet.
/// Shrink this list; never grow it.
const KNOWN: &[(&str, &str, &str)] = &[];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer: add it to LAYERS"))
}

/// Drops `//` and `/* */` comments, so doc links to higher layers are not arrows. Text in
/// strings is kept as it is: no string in `src/` spells a crate path.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first name of a path, or of each item of a `{..}` group (`{a::b, c}` gives a and c).
fn heads(s: &str) -> Vec<String> {
    let Some(group) = s.strip_prefix('{') else {
        return vec![ident_at(s).to_string()];
    };
    let (mut names, mut depth, mut start) = (Vec::new(), 0, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && (c.is_alphabetic() || c == '_') => {
                names.push(ident_at(&group[i..]).to_string());
                start = false;
            }
            _ => {}
        }
    }
    names
}

/// Which top-level modules the code of one file names, by `crate::` paths and by `super::`
/// paths that climb out of the file's top module (inline `mod x {` blocks are followed).
fn references(path: &[String], src: &str, root_items: &BTreeMap<String, String>) -> Vec<String> {
    let code = strip_comments(src);
    let mut found = Vec::new();
    // The module path at each point: the file's, plus the inline modules we are inside.
    let mut inline: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || {
            let p = bytes[i - 1] as char;
            !(p.is_alphanumeric() || p == '_' || p == '$')
        };
        if boundary && rest.starts_with("mod ") {
            let name = ident_at(rest[4..].trim_start());
            let after = rest[4..].trim_start()[name.len()..].trim_start();
            if after.starts_with('{') {
                inline.push((depth, name.to_string()));
            }
        }
        if boundary && rest.starts_with("crate::") {
            found.extend(heads(&rest["crate::".len()..]));
        } else if boundary && rest.starts_with("super::") && !code[..i].ends_with("super::") {
            let mut here: Vec<&str> = path.iter().map(String::as_str).collect();
            here.extend(inline.iter().map(|(_, n)| n.as_str()));
            let mut tail = rest;
            while let Some(t) = tail.strip_prefix("super::") {
                here.pop();
                tail = t;
            }
            match here.first() {
                Some(top) => found.push(top.to_string()),
                None => found.extend(heads(tail)),
            }
        }
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        i += rest.chars().next().unwrap().len_utf8();
    }
    // `crate::Error` is a re-export at the root: name the module it comes from.
    found
        .into_iter()
        .map(|n| root_items.get(&n).cloned().unwrap_or(n))
        .collect()
}

/// The items `lib.rs` re-exports (`pub use error::{Error, Result};`), by their module.
fn root_items(lib: &str) -> BTreeMap<String, String> {
    let mut items = BTreeMap::new();
    for line in strip_comments(lib).lines() {
        let Some(used) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident_at(used).to_string();
        let tail = used[module.len()..].trim_start_matches("::");
        for name in heads(tail.trim_end_matches(';')) {
            items.insert(name, module.clone());
        }
    }
    items
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Every arrow between top-level modules, each with a file that draws it.
fn arrows() -> BTreeMap<(String, String), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let items = root_items(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut arrows = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut path: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
        if path.last().is_some_and(|p| p == "mod") {
            path.pop();
        }
        // The crate root and the binary are above every layer.
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        for to in references(&path, &fs::read_to_string(&file).unwrap(), &items) {
            if to != path[0] {
                let shown = rel.display().to_string();
                arrows.entry((path[0].clone(), to)).or_insert(shown);
            }
        }
    }
    arrows
}

#[test]
fn no_module_uses_a_higher_layer() {
    let arrows = arrows();
    let known: BTreeSet<(&str, &str)> = KNOWN.iter().map(|&(a, b, _)| (a, b)).collect();
    let mut wrong = Vec::new();
    for ((from, to), file) in &arrows {
        let upwards = layer_of(to) > layer_of(from);
        let mutual = arrows.contains_key(&(to.clone(), from.clone()));
        let excused = known.contains(&(from.as_str(), to.as_str()))
            || (mutual && known.contains(&(to.as_str(), from.as_str())));
        if (upwards || mutual) && !excused {
            wrong.push(format!("{from} -> {to} (in src/{file}.rs)"));
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows against the layers:\n{}",
        wrong.join("\n")
    );
    for (from, to, _) in KNOWN {
        assert!(
            arrows.contains_key(&(from.to_string(), to.to_string())),
            "{from} -> {to} is gone: remove it from KNOWN"
        );
    }
}

#[test]
fn every_module_has_a_layer() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.trim().strip_prefix("pub mod ") {
            layer_of(name.trim_end_matches(';'));
        }
    }
}

#[test]
fn reads_paths_as_the_compiler_does() {
    let items = BTreeMap::from([("Error".to_string(), "error".to_string())]);
    let path = ["transfer".to_string(), "send".to_string()];
    let src = "use crate::{wire::Frame, manifest::{self, Entry}};\n\
               // crate::cli in a comment is no arrow\n\
               fn f() -> crate::Error { super::Window }\n\
               mod tests { use super::super::x; }";
    assert_eq!(
        references(&path, src, &items),
        ["wire", "manifest", "error", "transfer", "transfer"]
    );
    // From a top-level file, `super::` in an inline module stays home; two climb out.
    let path = ["nat".to_string()];
    let src = "mod tests { use super::Kind; use super::super::punch::X; }";
    assert_eq!(references(&path, src, &items), ["nat", "punch"]);
}

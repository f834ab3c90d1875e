//! The header is the contract: the functions it declares must be exactly
//! the symbols the shared library exports, and nothing else may leak.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn header_functions() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/writewatch.h"))
            .unwrap();
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("ww_") {
        let rest = &text[i..];
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = rest[ident.len()..].trim_start();
        let before = text[..i].trim_end();
        // A declaration: identifier followed by '(' and preceded by a type.
        if after.starts_with('(') && !before.ends_with("typedef") && !before.ends_with('.') {
            names.insert(ident);
        }
    }
    names
}

/// The library built alongside this test (same profile): `deps/`, next to
/// this test, always has the latest build; `cargo build` also copies it up
/// to the profile directory, but a bare `cargo test` does not (so on a
/// clean tree only `deps/` has it, and after a rebuild the copy is stale).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let built = deps.join("libwritewatch.so");
    if built.exists() {
        built
    } else {
        deps.parent().unwrap().join("libwritewatch.so")
    }
}

#[test]
fn exports_equal_header_prototypes() {
    let lib = library();
    assert!(lib.exists(), "{} not built", lib.display());
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|s| s.split('@').next().unwrap().to_string())
        .filter(|s| !s.starts_with("WRITEWATCH_"))
        .collect();
    let declared = header_functions();
    assert_eq!(declared.len(), 16, "header declares {declared:?}");
    assert_eq!(exported, declared);
}

#[test]
fn soname_and_nodelete() {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(library())
        .output()
        .expect("readelf");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[libwritewatch.so.0]"), "{text}");
    assert!(text.contains("NODELETE"), "linked -z nodelete: {text}");
}

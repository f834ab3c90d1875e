//! Builds and runs `ffi/tests/test_sigchain_dlopen.c`: a C host that
//! dlopens `libwritewatch.so` and owns SIGSEGV (see that file). Compiled
//! with the flags the C tests use (`-std=c11 -Wall -Wextra -Wpedantic
//! -Werror`) against the cdylib cargo built next to this test.
//!
//! Prints `SKIP <test>: <reason>` if there is no C compiler or no cdylib,
//! and when the program itself skips (exit 77).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn c_host_sigchain_through_dlopen() {
    const NAME: &str = "c_host_sigchain_through_dlopen";
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let lib = deps.join("libwritewatch.so");
    if !lib.exists() {
        println!("SKIP {NAME}: no cdylib at {}", lib.display());
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        println!("SKIP {NAME}: no C compiler ({cc})");
        return;
    }
    let exe = deps.join("test_sigchain_dlopen");
    let build = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-O1",
            "-g",
        ])
        .args(["-D_GNU_SOURCE", "-I"])
        .arg(root.join("include"))
        .arg(root.join("ffi/tests/test_sigchain_dlopen.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{NAME}: compiling failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe)
        .env("WW_LIB", &lib)
        .env_remove("WW_BACKEND")
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    println!("{out}");
    match run.status.code() {
        Some(0) => {}
        Some(77) => println!("SKIP {NAME}: {}", out.lines().last().unwrap_or("")),
        _ => panic!("{NAME}: {:?}\n{out}", run.status),
    }
}

//! Link settings for the C shared library only: its soname, an export list
//! of `ww_*` symbols, and `-z nodelete` so `dlclose` never unmaps code a
//! signal handler may still run.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo::rerun-if-changed=writewatch.map");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libwritewatch.so.0");
    println!("cargo::rustc-cdylib-link-arg=-Wl,--version-script={dir}/writewatch.map");
    println!("cargo::rustc-cdylib-link-arg=-Wl,-z,nodelete");
}

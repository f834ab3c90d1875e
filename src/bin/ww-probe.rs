//! Explains, per backend, why it is or is not available on this machine.
//! `--porcelain`: one line per backend, `name<TAB>yes|no<TAB>reason`.

use writewatch::BackendKind;

fn main() {
    let porcelain = std::env::args().any(|a| a == "--porcelain");
    if !porcelain {
        let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("kernel {}", uname.trim());
    }
    for kind in BackendKind::CONCRETE {
        let (ok, why) = match writewatch::probe_backend(kind) {
            Ok(()) => ("yes", "works (probed on a scratch mapping)".to_string()),
            Err(why) => ("no", why),
        };
        if porcelain {
            println!("{}\t{}\t{}", kind.name(), ok, why);
        } else {
            println!("{:<11} {:<3} {}", kind.name(), ok, why);
        }
    }
    if !porcelain {
        println!("auto picks: {}", writewatch::active_backend().name());
    }
}

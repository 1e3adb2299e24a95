//! Carries eventflux probes, waits for GATE, then replaces itself with another program:
//! `exec-target GATE PROGRAM [ARGS…]`. An observer attached to it sees its target exec.

use std::os::unix::process::CommandExt;
use std::path::Path;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(gate), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: exec-target GATE PROGRAM [ARGS…]");
        std::process::exit(2);
    };
    // A counter, so that the binary has eventflux probes to attach to.
    let counter = usdt_markers::ingest::Counter::new(0);
    while !Path::new(&gate).exists() {
        counter.add(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("exec-target: cannot exec: {err}");
    std::process::exit(1);
}

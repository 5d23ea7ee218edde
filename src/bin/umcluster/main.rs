//! `umcluster`: the admin tool for umcluster nodes.
//!
//! ```text
//! umcluster create [--name NAME] ADDR...   split the slots over the nodes and push the topology
//! umcluster check ADDR                     every node agrees on epoch and table, all slots served
//! ```
//!
//! Set `UMCLUSTER_PASSWORD` (and `UMCLUSTER_USER`) when the nodes require AUTH.

mod check;
mod conn;
mod create;
mod topology_push;

const USAGE: &str = "\
usage: umcluster <command> [args]

commands:
  create [--name NAME] ADDR...   split the 16384 slots evenly over the nodes (like
                                 redis-cli --cluster create) and push the topology to each
  check ADDR                     check that every node agrees on the epoch and the slot table
                                 and that all slots are served

ADDR is host:port ([ipv6]:port). Set UMCLUSTER_PASSWORD / UMCLUSTER_USER if the nodes need AUTH.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("create") => create::run(&args[1..]),
        Some("check") => check::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("umcluster: {e}");
        std::process::exit(1);
    }
}

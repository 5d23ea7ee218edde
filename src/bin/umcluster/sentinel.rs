//! Redis Sentinel integration: `umcluster sentinel-hook` (Sentinel's `client-reconfig-script`:
//! after Sentinel promotes a replica, push the topology that says so) and
//! `umcluster sentinel-config` (a Sentinel configuration monitoring every shard, one Sentinel
//! master name per shard).

use umcluster::addr::Addr;

use crate::failover::failover;
use crate::shards::{read_shards, Shard};

/// `umcluster sentinel-hook <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>`:
/// Sentinel's `client-reconfig-script`. Sentinel has promoted `to`; push the topology that says
/// so. Exit status 1 makes Sentinel retry the script.
pub fn sentinel_hook(args: &[String]) -> Result<(), String> {
    let [_name, _role, _state, _from_ip, _from_port, to_ip, to_port] = args else {
        return Err(
            "usage: umcluster sentinel-hook <master-name> <role> <state> <from-ip> <from-port> \
             <to-ip> <to-port>"
                .into(),
        );
    };
    let to = Addr::parse(format!("{to_ip}:{to_port}").as_bytes()).map_err(|e| e.to_string())?;
    failover(&to, &to)
}

/// Sentinel master name of shard `i` of cluster `name`.
pub fn sentinel_name(name: &str, i: usize) -> String {
    format!("{name}-{i}")
}

/// `umcluster sentinel-config [--port P] [--quorum Q] [--down-after MS] [--hook PATH] SEED_ADDR`.
pub fn sentinel_config(args: &[String]) -> Result<(), String> {
    let mut port = 26379u16;
    let mut quorum = 2u32;
    let mut down_after = 5000u64;
    let mut hook = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(crate::HOOK_NAME)))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| crate::HOOK_NAME.to_string());
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| it.next().cloned().ok_or(format!("{what} needs a value"));
        match a.as_str() {
            "--port" => port = value("--port")?.parse().map_err(|_| "bad --port")?,
            "--quorum" => quorum = value("--quorum")?.parse().map_err(|_| "bad --quorum")?,
            "--down-after" => {
                down_after = value("--down-after")?
                    .parse()
                    .map_err(|_| "bad --down-after")?
            }
            "--hook" => hook = value("--hook")?,
            other => seed = Some(Addr::parse(other.as_bytes()).map_err(|e| e.to_string())?),
        }
    }
    let seed = seed.ok_or(
        "usage: umcluster sentinel-config [--port P] [--quorum Q] [--down-after MS] [--hook PATH] \
         SEED_ADDR",
    )?;
    let (name, shards) = read_shards(&seed)?;
    println!("port {port}");
    print!(
        "{}",
        sentinel_text(&name, &shards, quorum, down_after, &hook)
    );
    Ok(())
}

/// The Sentinel configuration monitoring every shard.
pub fn sentinel_text(
    name: &str,
    shards: &[Shard],
    quorum: u32,
    down_after: u64,
    hook: &str,
) -> String {
    let mut out = format!(
        "# Sentinel configuration for umcluster cluster '{name}' ({} shards).\n\
         # The hook is the umcluster binary under the name {} (a symlink): it pushes the new\n\
         # topology after each failover. Each Sentinel needs its own copy of this file (it\n\
         # rewrites it) and its own port.\n",
        shards.len(),
        crate::HOOK_NAME
    );
    for (i, s) in shards.iter().enumerate() {
        let n = sentinel_name(name, i);
        out.push_str(&format!(
            "sentinel monitor {n} {} {} {quorum}\n\
             sentinel down-after-milliseconds {n} {down_after}\n\
             sentinel failover-timeout {n} {}\n\
             sentinel parallel-syncs {n} 1\n\
             sentinel client-reconfig-script {n} {hook}\n",
            s.master.host,
            s.master.port,
            // A failed election is retried after twice this: keep it short when down-after is.
            (down_after * 4).max(4_000),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use umcluster::topology::SlotRange;

    fn a(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn config_monitors_every_shard_with_the_hook() {
        let shards = vec![Shard {
            master: a("127.0.0.1:1"),
            replicas: vec![a("127.0.0.1:2")],
            ranges: vec![SlotRange {
                start: 0,
                end: 16383,
            }],
        }];
        let text = sentinel_text("c", &shards, 2, 1000, "/bin/hook");
        assert!(text.contains("sentinel monitor c-0 127.0.0.1 1 2\n"));
        assert!(text.contains("sentinel client-reconfig-script c-0 /bin/hook\n"));
    }
}

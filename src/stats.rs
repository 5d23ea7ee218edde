//! Counters reported in `INFO umcluster`.

/// Routing and control-plane counters since the module loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub moved: u64,
    pub ask: u64,
    pub crossslot: u64,
    pub tryagain: u64,
    pub clusterdown: u64,
    /// Script calls refused because they touched a key this node does not serve.
    pub script_denied: u64,
    /// Commands queued in MULTI that were refused (making the transaction fail at EXEC).
    pub multi_rejected: u64,
    /// EXECs aborted because the transaction's slot moved away after its commands were queued.
    pub exec_aborted: u64,
    /// Commands whose keys the server had to find (movable keys the router does not resolve).
    pub server_key_lookups: u64,
    pub setcluster_accepted: u64,
    pub setcluster_rejected: u64,
    pub setrepl_accepted: u64,
    pub setrepl_rejected: u64,
    /// Blocked clients released (`CLIENT UNBLOCK`) because their slot left this node.
    pub blocked_released: u64,
    /// Pushes refused because the `config-file` could not be written.
    pub config_write_failed: u64,
    /// Slot migration totals since load (tasks come and go; these stay).
    pub migration_keys_moved: u64,
    pub migration_bytes_moved: u64,
    pub migration_errors: u64,
    /// Commands answered `TRYAGAIN` because a key was on its way to the destination.
    pub migration_fenced: u64,
    /// Pieces of big collections handed to a destination (see `transfer::Piece`).
    pub migration_pieces: u64,
    /// Main-thread CPU time spent in migration ticks (µs).
    pub migration_cpu_us: u64,
}

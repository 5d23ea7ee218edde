//! The `CONFIG` part of `UMCTL SETCLUSTER`: settings the control plane sends with the topology.
//!
//! ```text
//! ... CONFIG compression_strategy disabled migration_max_migration_time 3600
//!            migration_max_blocking_time 10000 migration_scan_interval 500
//!            migration_scan_count 16
//! ```
//!
//! undermoon's coordinator always sends these five fields. An unknown field or a bad value does
//! not make the push fail: the rest applies and the reply is `+WARNING: ignored invalid config`.

use serde::{Deserialize, Serialize};

/// How a proxy may compress values (undermoon setting; accepted and reported, no effect here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CompressionStrategy {
    #[default]
    Disabled,
    SetGetOnly,
    AllowAll,
}

impl CompressionStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionStrategy::Disabled => "disabled",
            CompressionStrategy::SetGetOnly => "set_get_only",
            CompressionStrategy::AllowAll => "allow_all",
        }
    }

    fn parse(s: &str) -> Option<CompressionStrategy> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Some(CompressionStrategy::Disabled),
            "set_get_only" => Some(CompressionStrategy::SetGetOnly),
            "allow_all" => Some(CompressionStrategy::AllowAll),
            _ => None,
        }
    }
}

/// Settings carried by `SETCLUSTER ... CONFIG`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub compression_strategy: CompressionStrategy,
    /// Longest a migration may run before it is reported as failed, in seconds.
    pub migration_max_migration_time: u64,
    /// Longest the server may be blocked by one migration step, in milliseconds (caps the mover's
    /// tick budget when below it).
    pub migration_max_blocking_time: u64,
    /// Pause between two scan steps of a migration, in microseconds (the mover's pause between
    /// busy ticks when longer than its own).
    pub migration_scan_interval: u64,
    /// Keys visited per scan step of a migration (accepted; `RedisModule_Scan` has no count).
    pub migration_scan_count: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        // undermoon's defaults.
        ClusterConfig {
            compression_strategy: CompressionStrategy::Disabled,
            migration_max_migration_time: 10_800,
            migration_max_blocking_time: 10_000,
            migration_scan_interval: 500,
            migration_scan_count: 16,
        }
    }
}

/// Field names, as sent and as reported.
pub const FIELDS: [&str; 5] = [
    "compression_strategy",
    "migration_max_migration_time",
    "migration_max_blocking_time",
    "migration_scan_interval",
    "migration_scan_count",
];

impl ClusterConfig {
    /// Applies one `field value` pair. Returns false (and changes nothing) for an unknown field
    /// or an invalid value.
    pub fn set(&mut self, field: &str, value: &str) -> bool {
        let number = || value.parse::<u64>().ok();
        match field.to_ascii_lowercase().as_str() {
            "compression_strategy" => match CompressionStrategy::parse(value) {
                Some(v) => self.compression_strategy = v,
                None => return false,
            },
            "migration_max_migration_time" => match number() {
                Some(v) if v > 0 => self.migration_max_migration_time = v,
                _ => return false,
            },
            "migration_max_blocking_time" => match number() {
                Some(v) if v > 0 => self.migration_max_blocking_time = v,
                _ => return false,
            },
            "migration_scan_interval" => match number() {
                Some(v) => self.migration_scan_interval = v,
                None => return false,
            },
            "migration_scan_count" => match number() {
                Some(v) if v > 0 => self.migration_scan_count = v,
                _ => return false,
            },
            _ => return false,
        }
        true
    }

    /// The settings as `field value` pairs, in the order undermoon sends them.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            (FIELDS[0], self.compression_strategy.as_str().to_string()),
            (FIELDS[1], self.migration_max_migration_time.to_string()),
            (FIELDS[2], self.migration_max_blocking_time.to_string()),
            (FIELDS[3], self.migration_scan_interval.to_string()),
            (FIELDS[4], self.migration_scan_count.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_five_coordinator_fields() {
        let mut c = ClusterConfig::default();
        assert!(c.set("compression_strategy", "allow_all"));
        assert!(c.set("migration_max_migration_time", "100"));
        assert!(c.set("migration_max_blocking_time", "20"));
        assert!(c.set("migration_scan_interval", "0"));
        assert!(c.set("MIGRATION_SCAN_COUNT", "64"));
        assert_eq!(c.compression_strategy, CompressionStrategy::AllowAll);
        assert_eq!(c.migration_scan_count, 64);
        assert_eq!(c.pairs().len(), 5);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values_without_change() {
        let mut c = ClusterConfig::default();
        assert!(!c.set("nope", "1"));
        assert!(!c.set("migration_scan_count", "-1"));
        assert!(!c.set("migration_scan_count", "0"));
        assert!(!c.set("compression_strategy", "zstd"));
        assert_eq!(c, ClusterConfig::default());
    }
}

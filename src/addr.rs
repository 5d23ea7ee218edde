//! Node addresses as UMCTL carries them: `ip:port`, or `[ipv6]:port`.
//!
//! Redirects and `CLUSTER NODES` print the host without brackets (`::1:7001`), exactly as a native
//! cluster node does; clients split on the last `:`.

use std::fmt;
use std::net::IpAddr;

/// A node's announced address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    /// Host without brackets: an IPv4/IPv6 literal or a hostname.
    pub host: String,
    pub port: u16,
}

/// Why an address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAddr(pub String);

impl fmt::Display for BadAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid address '{}': expected ip:port or [ipv6]:port",
            self.0
        )
    }
}

impl Addr {
    /// Parses `host:port` or `[v6]:port`. The host must be an IP literal or a plain hostname
    /// (letters, digits, `-`, `.`, `_`); the port 1..=65535.
    pub fn parse(text: &[u8]) -> Result<Addr, BadAddr> {
        let bad = || BadAddr(String::from_utf8_lossy(text).into_owned());
        let text_str = std::str::from_utf8(text).map_err(|_| bad())?;
        let (host, port) = if let Some(rest) = text_str.strip_prefix('[') {
            let close = rest.find(']').ok_or_else(bad)?;
            let host = &rest[..close];
            let port = rest[close + 1..].strip_prefix(':').ok_or_else(bad)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            (host, port)
        } else {
            let colon = text_str.rfind(':').ok_or_else(bad)?;
            let host = &text_str[..colon];
            // An unbracketed host with a colon would be an IPv6 literal: ambiguous, refuse it.
            if host.contains(':') || !valid_host(host) {
                return Err(bad());
            }
            (host, &text_str[colon + 1..])
        };
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port: u32 = port.parse().map_err(|_| bad())?;
        if port == 0 || port > u16::MAX as u32 {
            return Err(bad());
        }
        Ok(Addr {
            host: host.to_string(),
            port: port as u16,
        })
    }

    /// The form used in `MOVED`/`ASK` and `CLUSTER NODES`: host and port joined by `:`,
    /// no brackets (native behaviour).
    pub fn redirect_form(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether both name the same endpoint: equal, or the same port with both hosts loopback
    /// (`localhost`, `127.0.0.1`, `::1`), which is how a replica told `REPLICAOF localhost 7001`
    /// reports a master the topology calls `127.0.0.1:7001`.
    pub fn same_endpoint(&self, other: &Addr) -> bool {
        self == other || (self.port == other.port && self.is_loopback() && other.is_loopback())
    }

    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether the host is an IPv6 literal.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.host.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
    }
}

impl fmt::Display for Addr {
    /// The UMCTL form: brackets around IPv6 hosts, so it parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl serde::Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        let text = String::deserialize(d)?;
        Addr::parse(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_endpoint_treats_loopback_names_alike() {
        let a = Addr::parse(b"127.0.0.1:7001").unwrap();
        assert!(a.same_endpoint(&Addr::parse(b"localhost:7001").unwrap()));
        assert!(a.same_endpoint(&Addr::parse(b"[::1]:7001").unwrap()));
        assert!(!a.same_endpoint(&Addr::parse(b"localhost:7002").unwrap()));
        assert!(!a.same_endpoint(&Addr::parse(b"10.0.0.1:7001").unwrap()));
    }

    use super::*;

    #[test]
    fn parses_ipv4_and_hostnames() {
        let a = Addr::parse(b"127.0.0.1:7001").unwrap();
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 7001);
        assert_eq!(a.to_string(), "127.0.0.1:7001");
        assert_eq!(
            Addr::parse(b"redis-1.local:6379").unwrap().host,
            "redis-1.local"
        );
    }

    #[test]
    fn parses_bracketed_ipv6_and_prints_native_redirect_form() {
        let a = Addr::parse(b"[::1]:7001").unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.redirect_form(), "::1:7001");
        assert_eq!(a.to_string(), "[::1]:7001");
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            &b""[..],
            b"127.0.0.1",
            b"127.0.0.1:",
            b":7001",
            b"127.0.0.1:0",
            b"127.0.0.1:65536",
            b"127.0.0.1:70a",
            b"127.0.0.1:+70",
            b"::1:7001",
            b"[::1]7001",
            b"[zz]:7001",
            b"host name:1",
            b"\xff\xfe:1",
            b"127.0.0.1:000000001",
        ] {
            assert!(
                Addr::parse(bad).is_err(),
                "{:?} should be rejected",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

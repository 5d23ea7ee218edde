//! The `config-file` of a node: the last accepted `SETCLUSTER` and `SETREPL`, saved so a restart
//! comes back with the same table, roles and epochs.
//!
//! The file keeps the accepted pushes' arguments verbatim (versioned JSON) rather than a second
//! serialisation of the topology: loading replays them through the same parsers that accepted
//! them, so the reloaded state cannot drift from what a live push would have produced, and both
//! epochs travel inside the arguments.
//!
//! ```json
//! {"version":1,"setcluster":["v2","7","NOFLAG","c",...],"setrepl":["3","NOFLAG","master",...]}
//! ```
//!
//! Writes are atomic: temporary file in the same directory, fsync, rename over the old file,
//! fsync of the directory. A reader sees the old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{setcluster, setrepl};

/// Version of the file format; a file with another version is refused (node starts unconfigured).
pub const FORMAT_VERSION: u32 = 1;

/// Largest file accepted at load (a full topology is a few hundred kB at most).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What the file holds: the arguments that follow `SETCLUSTER` / `SETREPL`, as accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    #[serde(default)]
    pub setcluster: Option<Vec<String>>,
    #[serde(default)]
    pub setrepl: Option<Vec<String>>,
}

impl Saved {
    pub fn new() -> Saved {
        Saved {
            version: FORMAT_VERSION,
            setcluster: None,
            setrepl: None,
        }
    }
}

/// Turns command arguments into what the file stores.
pub fn to_strings(args: &[&[u8]]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Serialises `saved`.
pub fn encode(saved: &Saved) -> String {
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(saved).unwrap_or_default()
}

/// Parses a file's contents and checks that each saved push still parses.
pub fn decode(text: &str) -> Result<Saved, String> {
    let saved: Saved = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if saved.version != FORMAT_VERSION {
        return Err(format!(
            "format version {} (this build reads version {FORMAT_VERSION})",
            saved.version
        ));
    }
    if let Some(args) = &saved.setcluster {
        let refs: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        setcluster::parse(&refs).map_err(|e| format!("saved SETCLUSTER does not parse: {e}"))?;
    }
    if let Some(args) = &saved.setrepl {
        let refs: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        setrepl::parse(&refs).map_err(|e| format!("saved SETREPL does not parse: {e}"))?;
    }
    Ok(saved)
}

/// Reads the file at `path`: `Ok(None)` when it does not exist (first start).
pub fn read(path: &Path) -> Result<Option<Saved>, String> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{} is too large ({len} bytes)", path.display()));
    }
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `saved` to `path` atomically (see the file comment).
pub fn write(path: &Path, saved: &Saved) -> Result<(), String> {
    write_atomic(path, encode(saved).as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        Saved {
            version: FORMAT_VERSION,
            setcluster: Some(to_strings(&[
                b"v2",
                b"7",
                b"NOFLAG",
                b"mycluster",
                b"127.0.0.1:7001",
                b"1",
                b"0-8191",
                b"PEER",
                b"127.0.0.1:7002",
                b"1",
                b"8192-16383",
            ])),
            setrepl: Some(to_strings(&[
                b"3",
                b"NOFLAG",
                b"master",
                b"mycluster",
                b"127.0.0.1:7001",
                b"1",
                b"127.0.0.1:7004",
                b"127.0.0.1:7004",
            ])),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("umcluster-persist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = scratch("roundtrip");
        let path = dir.join("node.json");
        assert_eq!(read(&path), Ok(None));
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path), Ok(Some(sample())));
        let mut next = sample();
        next.setrepl = None;
        write(&path, &next).unwrap();
        assert_eq!(read(&path), Ok(Some(next)));
        assert!(!temp_path(&path).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_corrupt_files() {
        assert!(decode("").is_err());
        assert!(decode("{\"version\":1,").is_err());
        assert!(decode("[1,2]").is_err());
        let mut wrong_version = sample();
        wrong_version.version = 99;
        assert!(decode(&encode(&wrong_version))
            .unwrap_err()
            .contains("version 99"));
        let mut bad_push = sample();
        bad_push.setcluster = Some(vec!["v2".into(), "notanumber".into()]);
        assert!(decode(&encode(&bad_push))
            .unwrap_err()
            .contains("SETCLUSTER"));
        let mut bad_repl = sample();
        bad_repl.setrepl = Some(vec!["1".into(), "NOFLAG".into(), "boss".into()]);
        assert!(decode(&encode(&bad_repl)).unwrap_err().contains("SETREPL"));
        assert_eq!(decode(&encode(&sample())), Ok(sample()));
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_panic() {
        let dir = scratch("unwritable");
        let path = dir.join("missing-dir").join("node.json");
        assert!(write(&path, &sample()).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}

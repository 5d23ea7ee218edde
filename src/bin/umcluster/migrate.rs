//! `umcluster migrate --slots A-B[,C-D...] --to ADDR [--timeout SECONDS] SEED`: move slots, with
//! their keys, to another master while clients keep working.
//!
//! The tool only drives the move; the keys travel inside the modules (the source node sends the
//! keys of its `migrating` slots to the destination itself, see migration.md). Steps:
//! 1. read every node's view (they must agree on who owns what; the only disagreement accepted is
//!    a commit of this very move that was interrupted half-way, which is finished);
//! 2. split the requested slots by owner (one migration per source; slots ADDR owns are skipped)
//!    and push, with an epoch above any node's, `migrating` on each source and `importing` on
//!    ADDR, the destination first so it accepts `ASK`ed clients before the source sends any;
//! 3. poll `UMCTL MIGRATIONS` (progress) and `UMCTL INFOMGR` (finished tasks) on the sources;
//! 4. commit: one more push giving the slots to ADDR, destination first.
//!
//! Resumable: the marks live in the nodes (and their config files), so a second run after the
//! tool died finds them in force, keeps their migration epoch (the source's task continues) and
//! goes on polling; after a commit it finds ADDR owning everything and says so.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use umcluster::addr::Addr;
use umcluster::resp::Value;
use umcluster::slot::SLOT_COUNT;
use umcluster::topology::SlotRange;

use crate::conn::Conn;
use crate::picture::{self, parse_slots, ranges_text, to_ranges, Migration, Picture};

/// How often the sources are polled.
const POLL: Duration = Duration::from_millis(200);
/// How often a progress line is printed when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// A task as `UMCTL MIGRATIONS` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub ranges: String,
    pub role: String,
    pub epoch: u64,
    pub src: String,
    pub dst: String,
    pub state: String,
    pub keys_moved: u64,
    pub bytes_moved: u64,
    /// -1: not known yet.
    pub keys_left: i64,
    pub keys_per_sec: u64,
    pub errors: u64,
    pub last_error: String,
}

/// Parses one `UMCTL MIGRATIONS` entry (field/value pairs; unknown fields are ignored so a newer
/// module can add some).
pub fn parse_task(entry: &Value) -> Option<Task> {
    let pairs: Vec<(String, String)> = match entry {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((k.as_str()?.to_string(), value_text(v))),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), value_text(v))))
            .collect(),
        _ => return None,
    };
    let mut t = Task {
        keys_left: -1,
        ..Task::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "ranges" => t.ranges = v,
            "role" => t.role = v,
            "epoch" => t.epoch = v.parse().unwrap_or(0),
            "src" => t.src = v,
            "dst" => t.dst = v,
            "state" => t.state = v,
            "keys_moved" => t.keys_moved = v.parse().unwrap_or(0),
            "bytes_moved" => t.bytes_moved = v.parse().unwrap_or(0),
            "keys_left" => t.keys_left = v.parse().unwrap_or(-1),
            "keys_per_sec" => t.keys_per_sec = v.parse::<f64>().map_or(0, |f| f as u64),
            "errors" => t.errors = v.parse().unwrap_or(0),
            "last_error" => t.last_error = v,
            _ => {}
        }
    }
    (!t.role.is_empty()).then_some(t)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Nil => String::new(),
        other => other.as_str().map(str::to_string).unwrap_or_default(),
    }
}

/// Whether an `UMCTL INFOMGR` line reports a finished MIGRATING task towards `dst` covering
/// `ranges`: `<cluster> MIGRATING <n> <ranges...> <epoch> <src-proxy> <src-node> <dst-proxy>
/// <dst-node>`.
pub fn infomgr_done(line: &str, dst: &Addr, ranges: &[SlotRange]) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 3 || !f[1].eq_ignore_ascii_case("MIGRATING") {
        return false;
    }
    let Ok(n) = f[2].parse::<usize>() else {
        return false;
    };
    if f.len() != 3 + n + 5 {
        return false;
    }
    let listed: Vec<u16> = f[3..3 + n]
        .iter()
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?))
        })
        .flat_map(|(a, b)| a..=b)
        .collect();
    let dst_ok = Addr::parse(f[3 + n + 3].as_bytes()).is_ok_and(|a| a.same_endpoint(dst));
    dst_ok
        && ranges
            .iter()
            .flat_map(|r| r.slots())
            .all(|s| listed.contains(&s))
}

/// Arguments of one migrate run.
pub struct Request {
    pub seed: Addr,
    pub to: Addr,
    pub slots: Vec<SlotRange>,
    pub timeout: Option<Duration>,
}

fn parse_args(args: &[String]) -> Result<Request, String> {
    let usage = "usage: umcluster migrate --slots A-B[,C-D...] --to ADDR [--timeout SECONDS] SEED";
    let (mut slots, mut to, mut timeout, mut seed) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{usage}"))
        };
        match arg.as_str() {
            "--slots" => slots = Some(parse_slots(value()?)?),
            "--to" => to = Some(Addr::parse(value()?.as_bytes()).map_err(|e| e.to_string())?),
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or_else(|| format!("bad --timeout '{v}' (seconds)"))?;
                timeout = Some(Duration::from_secs_f64(secs));
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}\n{usage}"))
            }
            addr if seed.is_none() => {
                seed = Some(Addr::parse(addr.as_bytes()).map_err(|e| e.to_string())?)
            }
            extra => return Err(format!("unexpected argument '{extra}'\n{usage}")),
        }
    }
    match (slots, to, seed) {
        (Some(slots), Some(to), Some(seed)) => Ok(Request {
            seed,
            to,
            slots,
            timeout,
        }),
        _ => Err(usage.into()),
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let req = parse_args(args)?;
    migrate(&req)
}

/// What the current state of the cluster means for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Every requested slot is already the destination's.
    Committed,
    /// A commit of this move reached some nodes only: push it again.
    FinishCommit,
    /// Start (or resume, when the marks are in force) these migrations.
    Move(Vec<(Addr, Vec<SlotRange>)>),
}

/// Decides what to do. Refuses when nodes disagree for another reason than an interrupted
/// commit of this move, when another migration is open, or when `to` is not a master.
pub fn next_step(p: &Picture, req: &Request) -> Result<Next, String> {
    let requested: Vec<u16> = req.slots.iter().flat_map(|r| r.slots()).collect();
    let is_requested = |s: u16| req.slots.iter().any(|r| r.start <= s && s <= r.end);
    if !p.masters.contains(&req.to) {
        return Err(if p.nodes.iter().any(|n| n.addr == req.to) {
            format!("{} is a replica: slots can only move to a master", req.to)
        } else {
            format!(
                "{} is not a node of the cluster: add it first (umcluster add-node {} {})",
                req.to, req.to, req.seed
            )
        });
    }
    let reference = p.reference();
    let mut interrupted_commit = false;
    let disagreements = p.disagreements();
    for (addr, slot, theirs, reference_owner) in &disagreements {
        let towards_to =
            theirs.as_ref() == Some(&req.to) || reference_owner.as_ref() == Some(&req.to);
        if !is_requested(*slot) || !towards_to {
            return Err(format!(
                "the nodes disagree: {addr} says slot {slot} belongs to {}, {} says {} \
                 (fix the topology first, e.g. umcluster check {})",
                theirs.as_ref().map_or("nobody".into(), |a| a.to_string()),
                reference.addr,
                reference_owner
                    .as_ref()
                    .map_or("nobody".into(), |a| a.to_string()),
                req.seed
            ));
        }
        interrupted_commit = true;
    }
    let open = p.open_migrations();
    for (src, dst, ranges) in &open {
        let inside = ranges.iter().flat_map(|r| r.slots()).all(is_requested);
        if dst != &req.to || !inside {
            return Err(format!(
                "another migration is open: slots {} from {src} to {dst}; finish it first \
                 (re-run: umcluster migrate --slots {} --to {dst} {})",
                ranges_text(ranges),
                ranges_text(ranges),
                req.seed
            ));
        }
    }
    for &s in &requested {
        if reference.owners[s as usize].is_none() {
            return Err(format!(
                "slot {s} has no owner: there are no keys to move, assign it instead"
            ));
        }
    }
    if interrupted_commit {
        return Ok(Next::FinishCommit);
    }
    let mut by_src: Vec<(Addr, Vec<u16>)> = Vec::new();
    for &s in &requested {
        let Some(owner) = reference.owners[s as usize].as_ref() else {
            continue;
        };
        if owner == &req.to {
            continue;
        }
        match by_src.iter_mut().find(|(a, _)| a == owner) {
            Some((_, v)) => v.push(s),
            None => by_src.push((owner.clone(), vec![s])),
        }
    }
    if by_src.is_empty() {
        return Ok(Next::Committed);
    }
    // Marks in force must be for exactly this move (all of it or, after an interrupted push,
    // part of it); anything else was refused above.
    Ok(Next::Move(
        by_src
            .into_iter()
            .map(|(a, slots)| (a, to_ranges(&slots)))
            .collect(),
    ))
}

/// Runs the whole move for `req`.
pub fn migrate(req: &Request) -> Result<(), String> {
    let started = Instant::now();
    let deadline = req.timeout.map(|t| started + t);
    let p = picture::read(&req.seed)?;
    let moves = match next_step(&p, req)? {
        Next::Committed => {
            println!(
                "[OK] already committed: slots {} are owned by {} (nothing to move)",
                ranges_text(&req.slots),
                req.to
            );
            return Ok(());
        }
        Next::FinishCommit => {
            println!("an earlier commit of this move reached only some nodes: finishing it");
            return commit(&req.seed, &req.to, &req.slots);
        }
        Next::Move(moves) => moves,
    };

    // Migration epochs: a mark in force keeps its epoch (the source's task continues with it);
    // a new migration takes the epoch of the push that creates it.
    let push_epoch = p.max_epoch() + 1;
    let mut migrations = Vec::new();
    let mut resumed = false;
    let mut all_marked = true;
    for (src, ranges) in &moves {
        let known = task_epoch(src, &req.to, ranges);
        let marked = p.marks_complete(src, &req.to, ranges);
        resumed |= known.is_some()
            || p.open_migrations()
                .iter()
                .any(|(s, d, _)| s == src && d == &req.to);
        all_marked &= marked && known.is_some();
        migrations.push(Migration {
            src: src.clone(),
            dst: req.to.clone(),
            ranges: ranges.clone(),
            epoch: known.unwrap_or(push_epoch),
        });
    }
    for m in &migrations {
        let n: usize = m.ranges.iter().map(|r| r.len()).sum();
        println!(
            "{} {n} slot(s) {} from {} to {} (migration epoch {})",
            if resumed { "resuming:" } else { "moving" },
            ranges_text(&m.ranges),
            m.src,
            m.dst,
            m.epoch
        );
    }
    if all_marked {
        println!("the migration marks are in force on both sides: waiting for the sources");
    } else {
        let reference = p.reference();
        let mut first = vec![req.to.clone()];
        first.extend(migrations.iter().map(|m| m.src.clone()));
        let order = p.push_order(&first);
        picture::push(
            &order,
            &p.name,
            push_epoch,
            &p.masters,
            &reference.owners,
            &migrations,
        )?;
        println!(
            "marks pushed to {} node(s) (epoch {push_epoch}): sources migrating, {} importing",
            order.len(),
            req.to
        );
    }
    wait_done(&migrations, deadline)?;
    commit(&req.seed, &req.to, &req.slots)?;
    println!("moved in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The migration epoch of the task moving `ranges` from `src` to `dst`, as the source (or, when
/// the push reached only the destination, the destination) reports it.
fn task_epoch(src: &Addr, dst: &Addr, ranges: &[SlotRange]) -> Option<u64> {
    for node in [src, dst] {
        let Ok(tasks) = tasks_of(node) else { continue };
        if let Some(t) = tasks
            .iter()
            .find(|t| same(&t.src, src) && same(&t.dst, dst) && covers(&t.ranges, ranges))
        {
            return Some(t.epoch);
        }
    }
    None
}

fn same(text: &str, addr: &Addr) -> bool {
    Addr::parse(text.as_bytes()).is_ok_and(|a| a.same_endpoint(addr))
}

/// Whether a task's `ranges` field (`0-99 200-210`, commas accepted) names every slot of `want`.
fn covers(text: &str, want: &[SlotRange]) -> bool {
    let text = text.replace(' ', ",");
    match parse_slots(&text) {
        Ok(have) => want
            .iter()
            .flat_map(|r| r.slots())
            .all(|s| have.iter().any(|r| r.start <= s && s <= r.end)),
        Err(_) => false,
    }
}

/// The tasks a node reports. An error when the node cannot be reached or does not know
/// `UMCTL MIGRATIONS`.
fn tasks_of(addr: &Addr) -> Result<Vec<Task>, String> {
    let mut c = Conn::open(addr)?;
    match c.call_ok(&["UMCTL", "MIGRATIONS"])? {
        Value::Array(items) => Ok(items.iter().filter_map(parse_task).collect()),
        other => Err(format!(
            "{addr}: unexpected UMCTL MIGRATIONS reply: {other}"
        )),
    }
}

fn infomgr_of(addr: &Addr) -> Result<Vec<String>, String> {
    let mut c = Conn::open(addr)?;
    match c.call_ok(&["UMCTL", "INFOMGR"])? {
        Value::Array(items) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()),
        other => Err(format!("{addr}: unexpected UMCTL INFOMGR reply: {other}")),
    }
}

/// Progress of one migration at one poll.
#[derive(Clone, Debug, Default)]
struct Progress {
    done: bool,
    task: Option<Task>,
    unreachable: Option<String>,
}

fn poll(m: &Migration) -> Result<Progress, String> {
    let tasks = match tasks_of(&m.src) {
        Ok(t) => t,
        // A source that does not know the subcommand never will: no point waiting.
        Err(e) if e.contains("unknown") || e.contains("Unknown") => {
            return Err(format!(
                "{e}: the module on {} cannot move keys (UMCTL MIGRATIONS missing); upgrade it",
                m.src
            ))
        }
        Err(e) => {
            return Ok(Progress {
                unreachable: Some(e),
                ..Progress::default()
            })
        }
    };
    let task = tasks.into_iter().find(|t| {
        t.role.eq_ignore_ascii_case("migrating")
            && same(&t.dst, &m.dst)
            && covers(&t.ranges, &m.ranges)
    });
    let mut done = task.as_ref().is_some_and(|t| t.state == "done");
    if !done {
        done = infomgr_of(&m.src)
            .map(|lines| lines.iter().any(|l| infomgr_done(l, &m.dst, &m.ranges)))
            .unwrap_or(false);
    }
    Ok(Progress {
        done,
        task,
        unreachable: None,
    })
}

/// One line describing every migration's progress.
fn progress_line(migrations: &[Migration], progress: &[Progress], elapsed: Duration) -> String {
    let moved: u64 = progress
        .iter()
        .filter_map(|p| p.task.as_ref())
        .map(|t| t.keys_moved)
        .sum();
    let bytes: u64 = progress
        .iter()
        .filter_map(|p| p.task.as_ref())
        .map(|t| t.bytes_moved)
        .sum();
    let rate: u64 = progress
        .iter()
        .filter(|p| !p.done)
        .filter_map(|p| p.task.as_ref())
        .map(|t| t.keys_per_sec)
        .sum();
    let left: Option<i64> = progress
        .iter()
        .map(|p| match &p.task {
            _ if p.done => Some(0),
            Some(t) if t.keys_left >= 0 => Some(t.keys_left),
            _ => None,
        })
        .sum();
    let done = progress.iter().filter(|p| p.done).count();
    let bar = match left {
        Some(left) if moved + left as u64 > 0 => {
            let frac = moved as f64 / (moved + left as u64) as f64;
            let filled = (frac * 20.0).round() as usize;
            format!(
                "[{}{}] {:>3.0}% ",
                "#".repeat(filled.min(20)),
                ".".repeat(20 - filled.min(20)),
                frac * 100.0
            )
        }
        _ => String::new(),
    };
    let mut line = format!(
        "{bar}{moved} keys moved ({:.1} MB), {} left, {rate} keys/s, {done}/{} task(s) done, {:.0}s",
        bytes as f64 / 1e6,
        left.map_or("?".to_string(), |l| l.to_string()),
        migrations.len(),
        elapsed.as_secs_f64()
    );
    for (m, p) in migrations.iter().zip(progress) {
        if let Some(e) = &p.unreachable {
            line.push_str(&format!(" | source {} unreachable: {e}", m.src));
        } else if let Some(t) = &p.task {
            if t.state == "retrying" || !t.last_error.is_empty() && !p.done {
                line.push_str(&format!(
                    " | {} {}: {} ({} errors)",
                    m.src, t.state, t.last_error, t.errors
                ));
            }
        } else if !p.done {
            line.push_str(&format!(" | {} shows no task yet", m.src));
        }
    }
    line
}

/// Polls the sources until every migration is done; shows progress.
fn wait_done(migrations: &[Migration], deadline: Option<Instant>) -> Result<(), String> {
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_plain: Option<Instant> = None;
    let mut last_problem = String::new();
    loop {
        let progress: Vec<Progress> = migrations.iter().map(poll).collect::<Result<_, _>>()?;
        let all_done = progress.iter().all(|p| p.done);
        let line = progress_line(migrations, &progress, started.elapsed());
        let mut out = std::io::stdout();
        if tty {
            // `\r` + clear to end of line: one line that updates in place.
            let _ = write!(out, "\r{line}\x1b[K");
            if all_done {
                let _ = writeln!(out);
            }
        } else {
            // Plain lines every few seconds, at once when a problem appears or changes.
            let problem = line.split(" | ").skip(1).collect::<Vec<_>>().join(" | ");
            let problem = problem.split(" (").next().unwrap_or_default().to_string();
            if all_done
                || last_plain.map_or(true, |t| t.elapsed() >= PLAIN_EVERY)
                || problem != last_problem
            {
                let _ = writeln!(out, "{line}");
                last_plain = Some(Instant::now());
                last_problem = problem;
            }
        }
        let _ = out.flush();
        if all_done {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if tty {
                println!();
            }
            return Err(
                "timed out waiting for the sources to finish; the marks stay in force and \
                 clients are served; run the same command again to resume"
                    .to_string(),
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Gives `slots` to `to` on every node (re-reading the nodes first: their epochs moved on).
fn commit(seed: &Addr, to: &Addr, slots: &[SlotRange]) -> Result<(), String> {
    let p = picture::read(seed)?;
    let mut owners = p.reference().owners.clone();
    for r in slots {
        for s in r.slots() {
            owners[s as usize] = Some(to.clone());
        }
    }
    let epoch = p.max_epoch() + 1;
    let sources: Vec<Addr> = p.open_migrations().into_iter().map(|(s, _, _)| s).collect();
    let mut first = vec![to.clone()];
    first.extend(sources);
    let order = p.push_order(&first);
    picture::push(&order, &p.name, epoch, &p.masters, &owners, &[])?;
    let owned = owners.iter().filter(|o| o.as_ref() == Some(to)).count();
    println!(
        "[OK] committed (epoch {epoch}) on {} node(s): slots {} now belong to {to} ({owned} of \
         {SLOT_COUNT} slots)",
        order.len(),
        ranges_text(slots),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_migrations_entry_and_ignores_unknown_fields() {
        let fields = [
            ("ranges", "0-99 200-210"),
            ("role", "migrating"),
            ("epoch", "7"),
            ("src", "127.0.0.1:1"),
            ("dst", "127.0.0.1:2"),
            ("state", "retrying"),
            ("keys_moved", "10"),
            ("bytes_moved", "2000"),
            ("keys_left", "-1"),
            ("keys_per_sec", "12.5"),
            ("errors", "3"),
            ("last_error", "connection refused"),
            ("future_field", "x"),
        ];
        let entry = Value::Array(
            fields
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
        );
        let t = parse_task(&entry).unwrap();
        assert_eq!(t.epoch, 7);
        assert_eq!(t.state, "retrying");
        assert_eq!(t.keys_left, -1);
        assert_eq!(t.keys_per_sec, 12);
        assert_eq!(t.last_error, "connection refused");
        let want = [
            SlotRange { start: 5, end: 99 },
            SlotRange {
                start: 205,
                end: 205,
            },
        ];
        assert!(covers(&t.ranges, &want));
        assert!(!covers(
            &t.ranges,
            &[SlotRange {
                start: 100,
                end: 100
            }]
        ));
        assert_eq!(parse_task(&Value::Int(3)), None);
        assert_eq!(parse_task(&Value::Array(vec![bulk("role")])), None);
    }

    #[test]
    fn infomgr_lines_are_matched_by_destination_and_slots() {
        let dst = Addr::parse(b"127.0.0.1:2").unwrap();
        let line = "db MIGRATING 2 0-99 200-210 7 127.0.0.1:1 127.0.0.1:1 127.0.0.1:2 127.0.0.1:2";
        let r = |a, b| SlotRange { start: a, end: b };
        assert!(infomgr_done(line, &dst, &[r(0, 99), r(200, 210)]));
        assert!(!infomgr_done(line, &dst, &[r(0, 100)]));
        let other = Addr::parse(b"127.0.0.1:3").unwrap();
        assert!(!infomgr_done(line, &other, &[r(0, 99)]));
        assert!(!infomgr_done(
            "db IMPORTING 1 0-99 7 a a b b",
            &dst,
            &[r(0, 99)]
        ));
        assert!(!infomgr_done("db MIGRATING 9 0-99", &dst, &[r(0, 99)]));
        assert!(!infomgr_done("", &dst, &[]));
    }

    #[test]
    fn options_are_checked() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let req = parse_args(&args(
            "--slots 0-10,20 --to 127.0.0.1:2 --timeout 5 127.0.0.1:1",
        ))
        .unwrap();
        assert_eq!(req.slots.len(), 2);
        assert_eq!(req.timeout, Some(Duration::from_secs(5)));
        for bad in [
            "--slots 0-10 127.0.0.1:1",
            "--to 127.0.0.1:2 127.0.0.1:1",
            "--slots 0-10 --to 127.0.0.1:2",
            "--slots 0-10 --to 127.0.0.1:2 --timeout -1 127.0.0.1:1",
            "--slots 0-10 --to 127.0.0.1:2 127.0.0.1:1 extra",
            "--slots 0-10 --to 127.0.0.1:2 --bogus 127.0.0.1:1",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    mod planning {
        use super::super::*;
        use crate::picture::{Mark, NodeView, Owners};

        fn a(p: u16) -> Addr {
            Addr::parse(format!("127.0.0.1:{p}").as_bytes()).unwrap()
        }

        /// Node 1 owns 0-8191, node 2 the rest, node 3 nothing.
        fn owners() -> Owners {
            (0..SLOT_COUNT)
                .map(|s| Some(if s < 8192 { a(1) } else { a(2) }))
                .collect()
        }

        fn view(p: u16, epoch: u64, owners: Owners, marks: Vec<Mark>) -> NodeView {
            NodeView {
                addr: a(p),
                epoch,
                max_epoch: epoch,
                owners,
                marks,
            }
        }

        fn picture(nodes: Vec<NodeView>) -> Picture {
            Picture {
                name: "c".into(),
                masters: vec![a(1), a(2), a(3)],
                nodes,
            }
        }

        fn req(lo: u16, hi: u16, to: u16) -> Request {
            Request {
                seed: a(1),
                to: a(to),
                slots: vec![SlotRange { start: lo, end: hi }],
                timeout: None,
            }
        }

        fn mark(slot: u16, on_source: bool) -> Mark {
            Mark {
                src: a(1),
                dst: a(3),
                slot,
                on_source,
            }
        }

        #[test]
        fn splits_by_owner_and_skips_the_targets_own_slots() {
            let p = picture((1..=3).map(|i| view(i, 5, owners(), vec![])).collect());
            assert_eq!(
                next_step(&p, &req(8000, 8300, 3)).unwrap(),
                Next::Move(vec![
                    (
                        a(1),
                        vec![SlotRange {
                            start: 8000,
                            end: 8191
                        }]
                    ),
                    (
                        a(2),
                        vec![SlotRange {
                            start: 8192,
                            end: 8300
                        }]
                    ),
                ])
            );
            assert_eq!(
                next_step(&p, &req(8000, 8300, 2)).unwrap(),
                Next::Move(vec![(
                    a(1),
                    vec![SlotRange {
                        start: 8000,
                        end: 8191
                    }]
                )])
            );
            assert_eq!(next_step(&p, &req(9000, 9100, 2)).unwrap(), Next::Committed);
            assert!(next_step(&p, &req(0, 10, 4))
                .unwrap_err()
                .contains("add-node"));
        }

        #[test]
        fn marks_for_this_move_resume_and_others_refuse() {
            let marks = vec![mark(0, true), mark(1, true)];
            let p = picture(vec![
                view(1, 6, owners(), marks),
                view(2, 6, owners(), vec![]),
                view(3, 6, owners(), vec![mark(0, false), mark(1, false)]),
            ]);
            assert_eq!(
                next_step(&p, &req(0, 1, 3)).unwrap(),
                Next::Move(vec![(a(1), vec![SlotRange { start: 0, end: 1 }])])
            );
            assert!(p.marks_complete(&a(1), &a(3), &[SlotRange { start: 0, end: 1 }]));
            // Another destination, or slots outside the request: refused.
            assert!(next_step(&p, &req(0, 1, 2))
                .unwrap_err()
                .contains("another migration is open"));
            assert!(next_step(&p, &req(1, 5, 3))
                .unwrap_err()
                .contains("another migration is open"));
            // A push that reached only the destination still counts as this move, incomplete.
            let half = picture(vec![
                view(1, 5, owners(), vec![]),
                view(2, 5, owners(), vec![]),
                view(3, 6, owners(), vec![mark(0, false), mark(1, false)]),
            ]);
            assert!(matches!(next_step(&half, &req(0, 1, 3)), Ok(Next::Move(_))));
            assert!(!half.marks_complete(&a(1), &a(3), &[SlotRange { start: 0, end: 1 }]));
        }

        #[test]
        fn an_interrupted_commit_is_finished_and_other_disagreements_refused() {
            let mut committed = owners();
            for o in &mut committed[0..=99] {
                *o = Some(a(3));
            }
            let p = picture(vec![
                view(1, 7, owners(), vec![mark(5, true)]),
                view(2, 7, owners(), vec![]),
                view(3, 8, committed.clone(), vec![]),
            ]);
            assert_eq!(next_step(&p, &req(0, 99, 3)).unwrap(), Next::FinishCommit);
            // The same disagreement is not this move's when the request is for other slots.
            assert!(next_step(&p, &req(200, 300, 3))
                .unwrap_err()
                .contains("disagree"));
            let mut elsewhere = owners();
            elsewhere[9000] = Some(a(1));
            let p = picture(vec![
                view(1, 7, owners(), vec![]),
                view(2, 7, elsewhere, vec![]),
                view(3, 7, owners(), vec![]),
            ]);
            assert!(next_step(&p, &req(0, 99, 3))
                .unwrap_err()
                .contains("disagree"));
        }
    }
}

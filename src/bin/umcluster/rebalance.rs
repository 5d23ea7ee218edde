//! `umcluster rebalance SEED [--dry-run] [--timeout SECONDS]`: even out the slot counts of the
//! masters with as few moves as possible, each move a `migrate`.
//!
//! Plan ([`plan`]): with N masters and S assigned slots, every master ends with S/N slots,
//! rounded down or up; the masters that hold the most now keep the rounded-up shares (so fewer
//! slots move). Then, repeatedly, the master with the largest surplus gives the one with the
//! largest deficit as many slots as one of them needs, taken from the top of its slots (so a
//! move is a contiguous range whenever the donor's slots are). Each step settles at least one
//! master, so there are at most (donors + receivers - 1) moves; when the cluster is already
//! balanced the plan is empty. Moves towards the same receiver run as one `migrate` (its
//! sources work in parallel).

use std::time::Duration;

use umcluster::addr::Addr;
use umcluster::topology::SlotRange;

use crate::migrate::{self, Request};
use crate::picture::{self, ranges_text, to_ranges};

/// One planned move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub from: Addr,
    pub to: Addr,
    pub ranges: Vec<SlotRange>,
}

impl Move {
    pub fn slot_count(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

/// Plans the moves that balance `masters` (each with its sorted slots).
pub fn plan(masters: &[(Addr, Vec<u16>)]) -> Vec<Move> {
    let n = masters.len();
    if n == 0 {
        return Vec::new();
    }
    let total: usize = masters.iter().map(|(_, s)| s.len()).sum();
    let (base, extra) = (total / n, total % n);
    // The `extra` most loaded masters keep one slot more than the others.
    let mut by_load: Vec<usize> = (0..n).collect();
    by_load.sort_by_key(|&i| std::cmp::Reverse(masters[i].1.len()));
    let mut target = vec![base; n];
    for &i in by_load.iter().take(extra) {
        target[i] += 1;
    }
    let mut slots: Vec<Vec<u16>> = masters.iter().map(|(_, s)| s.clone()).collect();
    let mut moves = Vec::new();
    loop {
        let surplus = |i: usize, slots: &[Vec<u16>]| slots[i].len() as i64 - target[i] as i64;
        let donor = (0..n).max_by_key(|&i| (surplus(i, &slots), std::cmp::Reverse(i)));
        let receiver = (0..n).min_by_key(|&i| (surplus(i, &slots), i));
        let (Some(d), Some(r)) = (donor, receiver) else {
            break;
        };
        let (give, need) = (surplus(d, &slots), -surplus(r, &slots));
        if give <= 0 || need <= 0 {
            break;
        }
        let k = give.min(need) as usize;
        let cut = slots[d].len() - k;
        let moved: Vec<u16> = slots[d].split_off(cut);
        slots[r].extend(&moved);
        slots[r].sort_unstable();
        moves.push(Move {
            from: masters[d].0.clone(),
            to: masters[r].0.clone(),
            ranges: to_ranges(&moved),
        });
    }
    moves
}

pub fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: umcluster rebalance [--dry-run] [--timeout SECONDS] SEED_ADDR";
    let (mut dry_run, mut timeout, mut seed) = (false, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dry-run" => dry_run = true,
            "--timeout" => {
                let v = it.next().ok_or("--timeout needs a value")?;
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
            _ => return Err(usage.into()),
        }
    }
    let seed = seed.ok_or(usage)?;
    let p = picture::read(&seed)?;
    if !p.disagreements().is_empty() {
        return Err(format!(
            "the nodes disagree about slot ownership; fix that first (umcluster check {seed})"
        ));
    }
    if let Some((src, dst, ranges)) = p.open_migrations().into_iter().next() {
        return Err(format!(
            "a migration is open (slots {} from {src} to {dst}): finish it first (re-run its \
             umcluster migrate --slots {} --to {dst} {seed})",
            ranges_text(&ranges),
            ranges_text(&ranges)
        ));
    }
    let owners = &p.reference().owners;
    let masters: Vec<(Addr, Vec<u16>)> = p
        .masters
        .iter()
        .map(|m| {
            let slots = (0..owners.len() as u16)
                .filter(|&s| owners[s as usize].as_ref() == Some(m))
                .collect();
            (m.clone(), slots)
        })
        .collect();
    let moves = plan(&masters);
    if moves.is_empty() {
        println!(
            "[OK] balanced: {} master(s), nothing to move",
            masters.len()
        );
        return Ok(());
    }
    println!("plan ({} move(s)):", moves.len());
    for m in &moves {
        println!(
            "  {} slots {} -> {}: {}",
            m.slot_count(),
            m.from,
            m.to,
            ranges_text(&m.ranges)
        );
    }
    if dry_run {
        println!("(dry run: nothing moved)");
        return Ok(());
    }
    // One migrate per receiver; its sources move in parallel.
    let mut receivers: Vec<Addr> = Vec::new();
    for m in &moves {
        if !receivers.contains(&m.to) {
            receivers.push(m.to.clone());
        }
    }
    for to in receivers {
        let mut slots: Vec<u16> = moves
            .iter()
            .filter(|m| m.to == to)
            .flat_map(|m| m.ranges.iter().flat_map(|r| r.slots()))
            .collect();
        slots.sort_unstable();
        let ranges = to_ranges(&slots);
        println!(
            ">>> umcluster migrate --slots {} --to {to} {seed}",
            ranges_text(&ranges)
        );
        migrate::migrate(&Request {
            seed: seed.clone(),
            to,
            slots: ranges,
            timeout,
        })?;
    }
    println!("[OK] rebalanced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::split_slots;

    fn a(i: u16) -> Addr {
        Addr::parse(format!("127.0.0.1:{}", 7000 + i).as_bytes()).unwrap()
    }

    fn apply(masters: &[(Addr, Vec<u16>)], moves: &[Move]) -> Vec<(Addr, Vec<u16>)> {
        let mut out = masters.to_vec();
        for m in moves {
            let slots: Vec<u16> = m.ranges.iter().flat_map(|r| r.slots()).collect();
            let from = out.iter_mut().find(|(x, _)| x == &m.from).unwrap();
            let gone: std::collections::HashSet<u16> = slots.iter().copied().collect();
            let before = from.1.len();
            from.1.retain(|s| !gone.contains(s));
            assert_eq!(
                before - from.1.len(),
                slots.len(),
                "the donor owns every moved slot"
            );
            let to = out.iter_mut().find(|(x, _)| x == &m.to).unwrap();
            to.1.extend(slots);
            to.1.sort_unstable();
        }
        out
    }

    fn assert_balanced(masters: &[(Addr, Vec<u16>)]) {
        let total: usize = masters.iter().map(|(_, s)| s.len()).sum();
        let n = masters.len();
        for (m, s) in masters {
            assert!(
                s.len() == total / n || s.len() == total.div_ceil(n),
                "{m} has {} slots",
                s.len()
            );
        }
    }

    fn created(n: u16) -> Vec<(Addr, Vec<u16>)> {
        split_slots(n as usize)
            .into_iter()
            .enumerate()
            .map(|(i, r)| (a(i as u16), r.slots().collect()))
            .collect()
    }

    #[test]
    fn a_new_empty_node_gets_a_contiguous_range_from_each_master() {
        let mut masters = created(3);
        masters.push((a(9), Vec::new()));
        let moves = plan(&masters);
        // Fewest moves: three donors, one receiver.
        assert_eq!(moves.len(), 3);
        for m in &moves {
            assert_eq!(m.to, a(9));
            assert_eq!(m.ranges.len(), 1, "one contiguous range per move");
        }
        let after = apply(&masters, &moves);
        assert_balanced(&after);
        assert!(after.iter().all(|(_, s)| s.len() == 4096));
        // Idempotent: a balanced cluster plans nothing.
        assert!(plan(&after).is_empty());
    }

    #[test]
    fn balanced_clusters_need_no_move() {
        for n in 1..12 {
            assert!(plan(&created(n)).is_empty(), "{n} masters");
        }
        assert!(plan(&[]).is_empty());
    }

    #[test]
    fn uneven_clusters_end_balanced_with_few_moves() {
        // Everything on one node, four empty ones: four moves, one per receiver.
        let mut masters = vec![(a(0), (0..16384).collect::<Vec<u16>>())];
        masters.extend((1..5).map(|i| (a(i), Vec::new())));
        let moves = plan(&masters);
        assert_eq!(moves.len(), 4);
        assert_balanced(&apply(&masters, &moves));

        // Two overloaded, two underloaded, sizes matching pairwise: two moves.
        let masters = vec![
            (a(0), (0..6096).collect::<Vec<u16>>()),
            (a(1), (6096..12192).collect()),
            (a(2), (12192..14288).collect()),
            (a(3), (14288..16384).collect()),
        ];
        let moves = plan(&masters);
        assert_eq!(moves.len(), 2);
        let after = apply(&masters, &moves);
        assert_balanced(&after);
        assert!(plan(&after).is_empty());

        // Removing load from a fragmented donor still balances (ranges may be several).
        let odd: Vec<u16> = (0..16384).filter(|s| s % 2 == 0).collect();
        let even: Vec<u16> = (0..16384).filter(|s| s % 2 == 1).collect();
        let masters = vec![(a(0), odd), (a(1), even), (a(2), Vec::new())];
        let moves = plan(&masters);
        assert!(moves.len() <= 2);
        assert_balanced(&apply(&masters, &moves));
    }

    #[test]
    fn every_move_count_is_bounded_by_donors_plus_receivers() {
        // Pseudo-random loads (deterministic LCG), all slots assigned.
        let mut seed: u64 = 42;
        for _ in 0..50 {
            let n = 2 + (seed % 7) as usize;
            let mut cuts: Vec<u16> = (0..n - 1)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) % 16384) as u16
                })
                .collect();
            cuts.sort_unstable();
            let mut bounds = vec![0u16];
            bounds.extend(cuts);
            let masters: Vec<(Addr, Vec<u16>)> = (0..n)
                .map(|i| {
                    let lo = bounds[i];
                    let hi = if i + 1 < n { bounds[i + 1] } else { 16384 };
                    (a(i as u16), (lo..hi).collect())
                })
                .collect();
            let moves = plan(&masters);
            let after = apply(&masters, &moves);
            assert_balanced(&after);
            assert!(plan(&after).is_empty());
            assert!(moves.len() < n, "{} moves for {n} masters", moves.len());
        }
    }
}

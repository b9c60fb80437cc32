//! CPU from the machine's own counters (`/proc/stat` and `/proc/<pid>/stat`): how much of
//! the machine a measured window used, and which processes used it. Both are in clock
//! ticks, so shares need no tick rate.

use std::collections::HashMap;

use serde::Serialize;

/// A reading of the machine's and every process's CPU ticks.
pub struct Reading {
    busy: u64,
    total: u64,
    by_process: HashMap<String, u64>,
}

/// Where a window's CPU went.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Share of all cores busy (user, system, interrupts) over the window.
    pub busy_share: f64,
    /// Busy core-milliseconds per unit of work (an answered message).
    pub ms_per_unit: f64,
    /// Core-milliseconds per unit, by process name, largest first (those above 1 %).
    pub by_process_ms_per_unit: Vec<(String, f64)>,
}

pub fn read() -> Reading {
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().next()?.strip_prefix("cpu ")?.to_string();
            let ticks: Vec<u64> = line
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let total: u64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            Some((total - idle, total))
        })
        .unwrap_or((0, 0));
    let mut by_process = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(stat) = std::fs::read_to_string(entry.path().join("stat")).ok() else {
                continue;
            };
            // pid (comm) state ppid ... utime(14) stime(15): comm may hold spaces.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| rest.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
            // After the comm: state is field 3, so utime (14) and stime (15) are at 11, 12.
            *by_process.entry(name).or_insert(0) += ticks(11) + ticks(12);
        }
    }
    Reading {
        busy,
        total,
        by_process,
    }
}

/// What happened over a window of `seconds` between `start` and `end`, on `cpus` cores,
/// per `units` of work.
pub fn usage(start: &Reading, end: &Reading, seconds: f64, cpus: usize, units: u64) -> Usage {
    let busy = end.busy.saturating_sub(start.busy) as f64;
    let total = end.total.saturating_sub(start.total).max(1) as f64;
    // All cores' ticks in the window are `total`, so one tick is this many core-ms.
    let tick_ms = seconds * 1000.0 * cpus as f64 / total;
    let units = units.max(1) as f64;
    let mut by_process: Vec<(String, f64)> = end
        .by_process
        .iter()
        .map(|(name, ticks)| {
            let before = start.by_process.get(name).copied().unwrap_or(0);
            (name.clone(), ticks.saturating_sub(before) as f64)
        })
        .filter(|(_, ticks)| *ticks >= busy * 0.01)
        .map(|(name, ticks)| (name, ticks * tick_ms / units))
        .collect();
    by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
    Usage {
        busy_share: busy / total,
        ms_per_unit: busy * tick_ms / units,
        by_process_ms_per_unit: by_process,
    }
}

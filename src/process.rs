//! Edge: which process this is, and whether another one still runs.
//!
//! A queued reply being sent names the process that claimed it, as
//! `pid:start time` (the start time in clock ticks since boot, field 22 of
//! `/proc/PID/stat`), so that after a crash or `kill -9` the next process
//! settles the dead one's rows at once instead of waiting out a lease; the
//! start time tells a reused pid from the original. Without `/proc` (or
//! for another machine's process), nothing can be said, and callers fall
//! back to the lease.

use std::sync::OnceLock;

/// This process, as `pid:start time`.
pub fn this_process() -> &'static str {
    static ME: OnceLock<String> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        match start_time(pid) {
            Some(t) => format!("{pid}:{t}"),
            None => format!("{pid}:?"),
        }
    })
}

/// Whether the process named by [`this_process`] (in this one or another)
/// is certainly gone: `Some(true)` when no process with that pid and start
/// time runs on this machine, `Some(false)` when it runs, `None` when that
/// cannot be told.
pub fn is_gone(claimant: &str) -> Option<bool> {
    let (pid, start) = claimant.split_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    // This machine has /proc if this process can read its own entry.
    start_time(std::process::id())?;
    Some(start_time(pid) != Some(start))
}

/// Field 22 of `/proc/PID/stat`, read after the command name (which is in
/// parentheses and may hold spaces or parentheses itself).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at 3 (state); the start time is 22.
    after_name.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_finished_one_is_gone() {
        let me = this_process();
        assert!(!me.ends_with(":?"), "{me}");
        assert_eq!(is_gone(me), Some(false));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        if let Some(start) = start {
            assert_eq!(is_gone(&format!("{pid}:{start}")), Some(true));
        }
        // Same pid, another start time: a reused pid is not the claimant.
        let (pid, start) = me.split_once(':').unwrap();
        let other = start.parse::<u64>().unwrap() + 1;
        assert_eq!(is_gone(&format!("{pid}:{other}")), Some(true));
        assert_eq!(is_gone("garbage"), None);
        assert_eq!(is_gone("12:?"), None);
    }
}

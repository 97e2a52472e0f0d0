//! Processes seen through `/proc`: whether one runs, its parent, its command line,
//! its children. Processes are only ever signalled by process id.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether process `pid` runs (a zombie waiting for its parent does not count).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// Sends `signal` (`-KILL`, `-TERM`, ...) to process `pid`.
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Parent process id of `pid`.
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." where comm may contain spaces and parentheses
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The command line (process title) of `pid`, NULs turned into spaces.
pub fn cmdline_of(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string())
}

/// Child processes of `ppid` with their process titles.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| ppid_of(*pid) == Some(ppid))
        .filter_map(|pid| cmdline_of(pid).map(|c| (pid, c)))
        .collect()
}

/// Process id of the postmaster of data directory `data`, while it runs.
pub fn postmaster_pid_of(data: &Path) -> Option<u32> {
    fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| pid_alive(*pid))
}

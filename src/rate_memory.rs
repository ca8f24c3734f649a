//! What each path delivered the last time this host sent over it, kept in a small file so
//! that the next connection to the same peer address starts from it instead of from ten
//! packets (careful resume; the rules of the leap are [`crate::congestion`]'s).
//!
//! One line per peer address: `IP RATE_BYTES_PER_S MIN_RTT_US UNIX_SECONDS`. The file is
//! this host's own, but is still read as untrusted text: a line that does not parse, or
//! whose figures are out of range, is skipped. Entries older than [`MAX_AGE`] are ignored
//! and dropped on the next write, and at most [`MAX_ENTRIES`] are kept, the newest. A
//! write goes to a temporary file renamed over the old one, so a crash or a second run
//! writing at the same time leaves one whole version, never a mix. Failing to read or write
//! only costs the head start, so errors are logged, never returned.
//!
//! May use: [`crate::congestion`].

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::congestion::Remembered;

/// How long a remembered rate is trusted: a home or office link's capacity changes with its
/// plan, but what else shares it changes by the hour (the leap is half the rate, and its
/// first round checks it, for what a day can still change).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Peer addresses kept.
pub const MAX_ENTRIES: usize = 256;
/// Rates above this (bytes/s, 400 Gbit/s) or RTTs above [`MAX_RTT`] are not believed.
const MAX_RATE: f64 = 50e9;
const MAX_RTT: Duration = Duration::from_secs(10);

/// The remembered rates, as read from their file at the start of a run.
#[derive(Debug, Clone)]
pub struct RateMemory {
    file: PathBuf,
    entries: HashMap<IpAddr, (Remembered, u64)>,
}

impl RateMemory {
    /// Reads `file` (a missing or unreadable file is an empty memory).
    pub fn load(file: PathBuf) -> RateMemory {
        let entries = match std::fs::read_to_string(&file) {
            Ok(text) => parse(&text, now_secs()),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(file = %file.display(), error = %e, "rate memory not read");
                }
                HashMap::new()
            }
        };
        RateMemory { file, entries }
    }

    /// What the path to `peer` delivered last time, if that was within [`MAX_AGE`].
    pub fn recall(&self, peer: IpAddr) -> Option<Remembered> {
        self.entries.get(&canonical(peer)).map(|(r, _)| *r)
    }

    /// Notes what the path to `peer` delivered and writes the file (blocking: call it off
    /// the runtime's threads).
    pub fn remember(&mut self, peer: IpAddr, r: Remembered) {
        if !believable(&r) {
            return;
        }
        self.entries.insert(canonical(peer), (r, now_secs()));
        if let Err(e) = self.write() {
            tracing::debug!(file = %self.file.display(), error = %e, "rate memory not written");
        }
    }

    fn write(&self) -> std::io::Result<()> {
        let mut newest: Vec<_> = self.entries.iter().collect();
        newest.sort_by_key(|(_, (_, at))| std::cmp::Reverse(*at));
        newest.truncate(MAX_ENTRIES);
        let mut text = String::new();
        for (ip, (r, at)) in newest {
            text.push_str(&format!(
                "{ip} {:.0} {} {at}\n",
                r.rate,
                r.min_rtt.as_micros()
            ));
        }
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            self.file
                .file_name()
                .map_or("rates".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // Which addresses this user copied with is the user's business alone.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, &self.file).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The entries of `text` that parse, are believable and are younger than [`MAX_AGE`] at
/// `now` (seconds since the epoch).
fn parse(text: &str, now: u64) -> HashMap<IpAddr, (Remembered, u64)> {
    let mut entries = HashMap::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(ip), Some(rate), Some(rtt), Some(at), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(ip), Ok(rate), Ok(rtt), Ok(at)) = (
            ip.parse::<IpAddr>(),
            rate.parse::<f64>(),
            rtt.parse::<u64>(),
            at.parse::<u64>(),
        ) else {
            continue;
        };
        let r = Remembered {
            rate,
            min_rtt: Duration::from_micros(rtt),
        };
        let fresh = at <= now && now - at < MAX_AGE.as_secs();
        if believable(&r) && fresh {
            entries.insert(canonical(ip), (r, at));
        }
    }
    entries
}

fn believable(r: &Remembered) -> bool {
    r.rate.is_finite()
        && r.rate > 0.0
        && r.rate <= MAX_RATE
        && !r.min_rtt.is_zero()
        && r.min_rtt <= MAX_RTT
}

/// An IPv4 peer seen through an IPv6 socket is the same peer.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(mbit: f64, rtt_ms: u64) -> Remembered {
        Remembered {
            rate: mbit * 125e3,
            min_rtt: Duration::from_millis(rtt_ms),
        }
    }

    #[test]
    fn what_is_remembered_is_recalled_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join("rates");
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let mut m = RateMemory::load(file.clone());
        assert_eq!(m.recall(peer), None);
        m.remember(peer, r(97.0, 200));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let next = RateMemory::load(file);
        assert_eq!(next.recall(peer), Some(r(97.0, 200)));
        // Seen through an IPv6 socket, the same peer.
        assert_eq!(
            next.recall("::ffff:203.0.113.7".parse().unwrap()),
            Some(r(97.0, 200))
        );
        assert_eq!(next.recall("203.0.113.8".parse().unwrap()), None);
    }

    #[test]
    fn stale_broken_and_unbelievable_lines_are_skipped() {
        let now = 1_800_000_000;
        let text = format!(
            "10.0.0.1 12500000 200000 {fresh}\n\
             10.0.0.2 12500000 200000 {old}\n\
             10.0.0.3 12500000 200000 {future}\n\
             10.0.0.4 NaN 200000 {fresh}\n\
             10.0.0.5 -5 200000 {fresh}\n\
             10.0.0.6 12500000 0 {fresh}\n\
             10.0.0.7 1e300 200000 {fresh}\n\
             10.0.0.8 12500000 200000\n\
             10.0.0.9 12500000 200000 {fresh} extra\n\
             not-an-ip 12500000 200000 {fresh}\n\
             \u{1b}[2J\n",
            fresh = now - 60,
            old = now - MAX_AGE.as_secs() - 1,
            future = now + 3600,
        );
        let entries = parse(&text, now);
        let ips: Vec<_> = entries.keys().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1"]);
    }

    #[test]
    fn the_file_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rates");
        let mut m = RateMemory::load(file.clone());
        for i in 0..MAX_ENTRIES as u32 + 10 {
            m.entries
                .insert(IpAddr::V4(i.into()), (r(10.0, 20), 1_000 + u64::from(i)));
        }
        m.remember("192.0.2.1".parse().unwrap(), r(50.0, 30));
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), MAX_ENTRIES);
        assert!(text.starts_with("192.0.2.1 6250000 30000 "));
        // The oldest ten went.
        assert!(!text.contains("\n0.0.0.0 "));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! Platform syscalls: the one room in the crate that calls libc, and the only place with
//! `unsafe` code.
//!
//! Like quinn-udp's `unix.rs` and `fallback.rs`, each platform's calls sit in a file of its
//! own behind the safe functions below: `linux.rs` (per-packet TTL, the socket error queue,
//! a `timerfd`, early writeback),
//! `unix.rs` (open-file limit, free disk space) and `fallback.rs` (what the others do where
//! the call does not exist: "unsupported", or a safe default). A port to another system
//! touches this folder and nothing else.
//!
//! May use: `std`, `libc`, `socket2`. Used by `net`, `hops` and `transfer::store`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

mod fallback;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(unix)]
mod unix;

// Per-socket calls: Linux's control messages and error queue.
#[cfg(not(target_os = "linux"))]
use fallback as per_socket;
#[cfg(target_os = "linux")]
use linux as per_socket;
// Per-process and file-system calls: any Unix.
#[cfg(not(unix))]
use fallback as per_process;
#[cfg(unix)]
use unix as per_process;

#[cfg(target_os = "linux")]
pub use linux::TimerFd;

/// Sends one datagram with its own TTL (IPv4) or hop limit (IPv6), as a control message,
/// so other packets on the socket keep theirs.
///
/// `Unsupported` where there is no per-packet TTL (everywhere but Linux).
pub fn send_with_ttl(
    sock: socket2::SockRef<'_>,
    dst: SocketAddr,
    data: &[u8],
    ttl: u32,
) -> io::Result<()> {
    per_socket::send_with_ttl(&sock, dst, data, ttl)
}

/// Sets an integer IP-level option (`IP_TTL` for [`IpOption::Ttl`], `IP_RECVERR` for
/// [`IpOption::RecvErr`]) on a socket.
///
/// `Unsupported` for options this platform does not have.
pub fn set_ip_option(sock: &UdpSocket, option: IpOption, value: u32) -> io::Result<()> {
    per_socket::set_ip_option(sock, option, value)
}

/// An IPv4 socket option [`set_ip_option`] can set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpOption {
    /// The TTL of every datagram sent.
    Ttl,
    /// Queue ICMP errors for [`time_exceeded_from`] to read.
    RecvErr,
}

/// Reads one entry of the socket's error queue (enabled with [`IpOption::RecvErr`]): who
/// sent an ICMP "time exceeded", if that is what it was. Never blocks (`WouldBlock` when the
/// queue is empty).
///
/// `Unsupported` where sockets have no error queue (everywhere but Linux).
pub fn time_exceeded_from(sock: &UdpSocket) -> io::Result<Option<Ipv4Addr>> {
    per_socket::time_exceeded_from(sock)
}

/// Raises this process's soft limit on open files to `want` (at most the hard limit), and
/// returns the limit in force afterwards.
pub fn raise_open_file_limit(want: u64) -> u64 {
    per_process::raise_open_file_limit(want)
}

/// This process's effective user id (the owner its files get); `None` where there is none.
pub fn effective_uid() -> Option<u32> {
    per_process::effective_uid()
}

/// Whether a failed write ran into the user's disk quota (`EDQUOT`), which std's
/// `ErrorKind::StorageFull` does not cover.
pub fn is_quota_exceeded(e: &io::Error) -> bool {
    per_process::is_quota_exceeded(e)
}

/// Starts writing `file`'s dirty pages to disk and returns without waiting, so the device
/// works while we go on and a later fsync finds the data written (as dpkg does before its
/// fsyncs). A hint: a no-op where the call does not exist, and a failure shows at the fsync.
pub fn start_writeback(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    linux::start_writeback(file);
    #[cfg(not(target_os = "linux"))]
    fallback::start_writeback(file);
}

/// Bytes free for an unprivileged user on the file system holding `dir`, if known.
pub fn free_space(dir: &Path) -> Option<u64> {
    per_process::free_space(dir)
}

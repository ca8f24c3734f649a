//! What the platform calls come to where they do not exist: "unsupported" for the callers
//! that have a plan B, a safe default for the others.
//!
//! Compiled everywhere (so a change to these signatures fails on Linux too), used only where
//! [`super::linux`] or [`super::unix`] is not.
#![cfg_attr(unix, allow(dead_code))]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

use super::IpOption;

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "not supported on this platform")
}

pub(super) fn send_with_ttl(
    _sock: &socket2::Socket,
    _dst: SocketAddr,
    _data: &[u8],
    _ttl: u32,
) -> io::Result<()> {
    Err(unsupported())
}

pub(super) fn set_ip_option(_sock: &UdpSocket, _option: IpOption, _value: u32) -> io::Result<()> {
    Err(unsupported())
}

pub(super) fn time_exceeded_from(_sock: &UdpSocket) -> io::Result<Option<Ipv4Addr>> {
    Err(unsupported())
}

/// A limit that leaves the birthday technique a few hundred sockets.
pub(super) fn raise_open_file_limit(_want: u64) -> u64 {
    512
}

pub(super) fn is_quota_exceeded(_e: &io::Error) -> bool {
    false
}

pub(super) fn free_space(_dir: &Path) -> Option<u64> {
    None
}

pub(super) fn effective_uid() -> Option<u32> {
    None
}

/// The data is written at the fsync instead.
pub(super) fn start_writeback(_file: &std::fs::File) {}

//! Linux only: per-packet TTL as a control message, the socket error queue, a timer file
//! descriptor, and early writeback of a file.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::IpOption;

pub(super) fn send_with_ttl(
    sock: &socket2::Socket,
    dst: SocketAddr,
    data: &[u8],
    ttl: u32,
) -> io::Result<()> {
    let addr = socket2::SockAddr::from(dst);
    let (level, kind) = match dst {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TTL),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT),
    };
    let value = ttl as libc::c_int;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: every pointer in msghdr refers to a live local buffer of the stated length, and
    // the control buffer is larger than CMSG_SPACE(sizeof(int)).
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, value);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn set_ip_option(sock: &UdpSocket, option: IpOption, value: u32) -> io::Result<()> {
    let name = match option {
        IpOption::Ttl => libc::IP_TTL,
        IpOption::RecvErr => libc::IP_RECVERR,
    };
    let v = value as libc::c_int;
    // SAFETY: a plain setsockopt with a pointer to a local int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn time_exceeded_from(sock: &UdpSocket) -> io::Result<Option<Ipv4Addr>> {
    let mut data = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: msghdr points at live local buffers of the stated sizes; the kernel fills
    // at most msg_controllen bytes, and each cmsg is read within that range.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let rc = libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        );
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let ee = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                let ee_v = std::ptr::read_unaligned(ee);
                // ICMP type 11: time exceeded in transit.
                if ee_v.ee_origin == libc::SO_EE_ORIGIN_ICMP && ee_v.ee_type == 11 {
                    let from = libc::SO_EE_OFFENDER(ee) as *const libc::sockaddr_in;
                    let from = std::ptr::read_unaligned(from);
                    if from.sin_family == libc::AF_INET as libc::sa_family_t {
                        return Ok(Some(Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr))));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(None)
    }
}

/// A one-shot monotonic timer as a descriptor (`timerfd`), readable once it fires: a
/// wait of well under tokio's 1-ms timer tick that still wakes the runtime through
/// `epoll` (`net::held`'s receive holds).
#[derive(Debug)]
pub struct TimerFd(std::os::fd::OwnedFd);

impl TimerFd {
    /// A disarmed, non-blocking timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall; the descriptor it returns is owned from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(TimerFd(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Fires once, `after` from now (at least a nanosecond: zero would disarm it).
    pub fn arm(&self, after: std::time::Duration) -> io::Result<()> {
        let after = after.max(std::time::Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        // SAFETY: the descriptor is ours and `spec` a live local; no old value asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the timer fired since it was armed (and takes that note); `WouldBlock`
    /// while it has not.
    pub fn fired(&self) -> io::Result<()> {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer of 8.
        let rc = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                count.as_mut_ptr() as *mut libc::c_void,
                count.len(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

pub(super) fn start_writeback(file: &std::fs::File) {
    // SAFETY: a plain call on a descriptor the File owns for the whole call. Its result is
    // ignored: the fsync that follows reports any write error.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

//! coturn on loopback for the relay tests: started with the given auth flags, ready when
//! both its UDP and TCP listeners answer; skipped (`None`) where it is not installed.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use p2pcopy::relay::{Credentials, RelayUri, Secret, Transport};

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub struct Coturn {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    // A port free for both TCP and UDP (coturn listens on both).
    loop {
        let tcp = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((LOOPBACK, port)).is_ok() {
            return port;
        }
    }
}

/// coturn on 127.0.0.1 with `auth` flags, or `None` when it is not installed.
pub fn coturn(auth: &[&str]) -> Option<Coturn> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--allow-loopback-peers",
        ])
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args([
            "--min-port",
            "50000",
            "--max-port",
            "59999",
            "--realm",
            "lab",
        ])
        .arg("--userdb")
        .arg(dir.path().join("turndb"))
        .arg("--pidfile")
        .arg(dir.path().join("pid"))
        .args(["--log-file", "stdout", "--simple-log"])
        .args(auth)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Coturn {
        child,
        port,
        _dir: dir,
    };
    // Ready when both listeners are: TCP accepts, and UDP answers a Binding request (coturn
    // starts them on separate threads; an early datagram meets a closed port).
    let probe = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let request = p2pcopy::stun::message::encode_request([7; 12], false, false);
    for _ in 0..50 {
        let _ = probe.send_to(&request, (LOOPBACK, port));
        let mut buf = [0u8; 200];
        if probe.recv_from(&mut buf).is_ok()
            && std::net::TcpStream::connect((LOOPBACK, port)).is_ok()
        {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("turnserver did not start listening on {port}");
}

pub fn long_term(password: &str) -> Credentials {
    Credentials::LongTerm {
        user: "alice".into(),
        password: Secret::new(password),
    }
}

pub fn uri(port: u16, transport: Transport) -> RelayUri {
    RelayUri {
        host: "127.0.0.1".into(),
        port,
        transport,
    }
}

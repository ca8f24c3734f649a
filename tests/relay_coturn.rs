//! The TURN client against a real coturn on loopback: allocation over UDP and TCP with
//! long-term credentials and with TURN REST credentials (`use-auth-secret`), data both ways
//! through the relay, a wrong password, a relay that is down. Skipped (passing) where
//! coturn's `turnserver` is not installed; the lab runs the same against coturn in a
//! namespace, TLS included.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use p2pcopy::relay::{Allocation, Credentials, RelayError, Secret, Transport};

#[path = "common/coturn.rs"]
mod coturn;
use coturn::{coturn, free_port, long_term, uri, Coturn, LOOPBACK};

/// Allocates, lets a peer socket in, and moves a datagram each way.
async fn round_trip(server: &Coturn, transport: Transport, creds: &Credentials) {
    let alloc = Allocation::open(&uri(server.port, transport), creds)
        .await
        .unwrap_or_else(|e| panic!("{transport}: {e}"));
    let info = alloc.info();
    assert_eq!(info.relayed.ip(), LOOPBACK);
    assert_eq!(info.transport, transport);
    let peer = tokio::net::UdpSocket::bind((LOOPBACK, 0)).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    alloc.permit(peer_addr.ip()).await.unwrap();
    peer.send_to(b"to the relayed address", info.relayed)
        .await
        .unwrap();
    let (from, data) = tokio::time::timeout(Duration::from_secs(5), alloc.recv_from())
        .await
        .expect("relayed datagram")
        .unwrap();
    assert_eq!(
        (from, &data[..]),
        (peer_addr, &b"to the relayed address"[..])
    );
    alloc
        .send_to(peer_addr, b"back through the relay")
        .await
        .unwrap();
    let mut buf = [0u8; 100];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("datagram from the relay")
        .unwrap();
    assert_eq!(
        (from, &buf[..n]),
        (info.relayed, &b"back through the relay"[..])
    );
    alloc.close().await;
}

#[tokio::test]
async fn long_term_credentials_over_udp_and_tcp() {
    let Some(server) = coturn(&["--lt-cred-mech", "--user", "alice:pw1"]) else {
        eprintln!("turnserver not installed: skipped");
        return;
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        round_trip(&server, transport, &long_term("pw1")).await;
        match Allocation::open(&uri(server.port, transport), &long_term("wrong")).await {
            Err(RelayError::Refused { code: 401, .. }) => {}
            other => panic!("{transport}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn rest_credentials_from_the_static_auth_secret() {
    let Some(server) = coturn(&["--use-auth-secret", "--static-auth-secret", "north-wind"]) else {
        eprintln!("turnserver not installed: skipped");
        return;
    };
    let creds = Credentials::Rest {
        user: "p2pcopy".into(),
        secret: Secret::new("north-wind"),
    };
    round_trip(&server, Transport::Udp, &creds).await;
    let wrong = Credentials::Rest {
        user: "p2pcopy".into(),
        secret: Secret::new("south-wind"),
    };
    let e = Allocation::open(&uri(server.port, Transport::Udp), &wrong)
        .await
        .unwrap_err();
    assert!(matches!(e, RelayError::Refused { code: 401, .. }), "{e:?}");
}

#[tokio::test]
async fn a_relay_that_is_down_is_unreachable() {
    let port = free_port();
    let e = Allocation::open(&uri(port, Transport::Tcp), &long_term("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, RelayError::Unreachable(_)), "{e:?}");
    // Over UDP the ICMP port unreachable comes back on the connected socket.
    let e = Allocation::open(&uri(port, Transport::Udp), &long_term("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, RelayError::Unreachable(_)), "{e:?}");
    let _ = SocketAddr::new(LOOPBACK, port);
}

#[tokio::test]
async fn a_relay_that_goes_away_is_reported_not_waited_for() {
    let Some(mut server) = coturn(&["--lt-cred-mech", "--user", "alice:pw1"]) else {
        eprintln!("turnserver not installed: skipped");
        return;
    };
    let alloc = Allocation::open(&uri(server.port, Transport::Tcp), &long_term("pw1"))
        .await
        .unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let e = tokio::time::timeout(Duration::from_secs(5), alloc.recv_from())
        .await
        .expect("an error, not a hang")
        .unwrap_err();
    assert!(matches!(e, RelayError::Unreachable(_)), "{e:?}");
    let e = tokio::time::timeout(Duration::from_secs(5), alloc.permit(LOOPBACK))
        .await
        .expect("an error, not a hang")
        .unwrap_err();
    assert!(matches!(e, RelayError::Unreachable(_)), "{e:?}");
}

/// The binary, with no config file of the user's in the way.
fn p2pcopy(args: &[&str], env: &[(&str, &str)], home: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2pcopy"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_CACHE_HOME", home)
        .env("HOME", home)
        .env_remove("P2PCOPY_RELAY")
        .env_remove("P2PCOPY_RELAY_PASSWORD")
        .env_remove("P2PCOPY_RELAY_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_binary_with_relay_flags_and_a_config_file() {
    let home = tempfile::tempdir().unwrap();
    // Transfers take --relay; a password without its user is a usage error.
    let o = p2pcopy(
        &[
            "sender",
            "-f",
            "Cargo.toml",
            "--relay",
            "turn:h",
            "--relay-password",
            "pw-3b",
        ],
        &[],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim(), "p2pcopy: --relay-password needs --relay-user");

    // A bad config file: one line naming file, line and key.
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "timeout = 30\noutput = 5\n").unwrap();
    let o = p2pcopy(
        &["doctor", "--config", bad.to_str().unwrap()],
        &[],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("p2pcopy: {}:2: output: ", bad.display())),
        "{err}"
    );
    // ... but it does not stand between a user and the commands that read no config.
    let bad = bad.to_str().unwrap();
    for args in [
        &["--config", bad, "--help"][..],
        &["--config", bad, "--version"],
        &["--config", bad, "sender", "--help"],
        &["--config", bad, "completions", "bash"],
        &["--config", bad, "man"],
    ] {
        let o = p2pcopy(args, &[], home.path());
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(!o.stdout.is_empty(), "{args:?}");
    }

    let Some(server) = coturn(&["--lt-cred-mech", "--user", "alice:pw-7e2a9f"]) else {
        eprintln!("turnserver not installed: skipped");
        return;
    };
    // The platform's config file (XDG) names the relay and holds the password; others can
    // read it, so a warning comes too. Nothing at -vvv shows the password.
    let dir = home.path().join("p2pcopy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "stun_servers = [\"127.0.0.1:{0}\"]\n[[relay]]\nuri = \"turn:127.0.0.1:{0}?transport=tcp\"\nuser = \"alice\"\npassword = \"pw-7e2a9f\"\n",
            server.port
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("config.toml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let args = [
        "doctor",
        "--bind",
        "127.0.0.1",
        "--no-ntp",
        "--no-portmap",
        "-vvv",
    ];
    let o = p2pcopy(&args, &[], home.path());
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "Relay turn:127.0.0.1:{0}?transport=tcp (tcp to 127.0.0.1:{0}): ",
            server.port
        )),
        "{out}"
    );
    assert!(err.contains("p2pcopy: warning: "), "{err}");
    assert!(!out.contains("pw-7e2a9f") && !err.contains("pw-7e2a9f"));
}

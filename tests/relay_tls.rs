//! `turns:` against a real coturn on loopback, its certificate from a CA made here (rcgen):
//! trusted through the OS trust store's own override (`SSL_CERT_FILE`, honoured by
//! rustls-native-certs as by OpenSSL), refused under another CA. Its own test binary,
//! since it sets the environment of the process. Passes without running where coturn's
//! `turnserver` is not installed.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use p2pcopy::relay::{Allocation, Credentials, RelayError, RelayUri, Secret, Transport};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

#[tokio::test]
async fn turns_verifies_the_server_against_the_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca("p2pcopy test CA");
    let other = ca("someone else's CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ours)
        .unwrap();
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("turn.crt"), cert.pem()).unwrap();
    std::fs::write(path("turn.key"), key.serialize_pem()).unwrap();
    std::fs::write(path("ours.crt"), ours.as_ref().pem()).unwrap();
    std::fs::write(path("other.crt"), other.as_ref().pem()).unwrap();

    let free = || {
        let l = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, plain) = (free(), free());
    let Ok(mut child) = Command::new("turnserver")
        .args([
            "-n",
            "--no-cli",
            "--no-dtls",
            "--no-udp",
            "--allow-loopback-peers",
        ])
        .args([
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            "lab",
        ])
        .args(["--listening-port", &plain.to_string()])
        .args(["--tls-listening-port", &port.to_string()])
        .args(["--lt-cred-mech", "--user", "alice:pw1"])
        .arg("--cert")
        .arg(path("turn.crt"))
        .arg("--pkey")
        .arg(path("turn.key"))
        .arg("--userdb")
        .arg(path("turndb"))
        .arg("--pidfile")
        .arg(path("pid"))
        .args(["--log-file", "stdout", "--simple-log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("turnserver not installed: skipped");
        return;
    };
    for _ in 0..50 {
        if std::net::TcpStream::connect((LOOPBACK, port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let uri = RelayUri {
        host: "127.0.0.1".into(),
        port,
        transport: Transport::Tls,
    };
    let creds = Credentials::LongTerm {
        user: "alice".into(),
        password: Secret::new("pw1"),
    };

    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("SSL_CERT_FILE", path("other.crt"));
    let e = Allocation::open(&uri, &creds).await.unwrap_err();
    assert!(
        matches!(&e, RelayError::Tls(why) if why.contains("UnknownIssuer")),
        "{e:?}"
    );

    std::env::set_var("SSL_CERT_FILE", path("ours.crt"));
    let alloc = Allocation::open(&uri, &creds).await;
    let _ = child.kill();
    let _ = child.wait();
    let alloc = alloc.unwrap();
    assert_eq!(alloc.info().transport, Transport::Tls);
    assert_eq!(alloc.relayed_addr().ip(), LOOPBACK);
}

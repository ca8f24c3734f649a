//! The transport to a TURN server: a connected UDP socket, or a TCP stream (under TLS,
//! verified against the OS trust store, for `turns:`), split into the half the driver
//! reads and the half both the driver and the commands write.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{proto, RelayError, RelayUri, Transport};

pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub(super) type BoxStream = Box<dyn Stream>;

#[derive(Clone)]
pub(super) enum Writer {
    /// Connected to the server.
    Udp(Arc<UdpSocket>),
    Stream(Arc<tokio::sync::Mutex<tokio::io::WriteHalf<BoxStream>>>),
}

impl Writer {
    pub(super) async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Udp(sock) => sock.send(bytes).await.map(|_| ()),
            Writer::Stream(w) => w.lock().await.write_all(bytes).await,
        }
    }
}

pub(super) enum Reader {
    Udp(Arc<UdpSocket>, SocketAddr),
    Stream(tokio::io::ReadHalf<BoxStream>, Vec<u8>),
}

impl Reader {
    /// The next datagram or frame from the server; datagrams from anyone else are dropped
    /// here, so a stranger who learns our port cannot feed the client.
    pub(super) async fn next(&mut self) -> Result<Vec<u8>, RelayError> {
        match self {
            Reader::Udp(sock, server) => {
                let mut buf = vec![0u8; 65536];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) if from == *server => {
                            buf.truncate(n);
                            return Ok(buf);
                        }
                        Ok((_, from)) => {
                            tracing::trace!(%from, "datagram not from the relay dropped")
                        }
                        // ICMP port unreachable from a relay that is down shows up here.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return Err(RelayError::Unreachable(e.to_string()))
                        }
                        Err(e) => tracing::debug!(error = %e, "relay socket receive error"),
                    }
                }
            }
            Reader::Stream(r, buf) => loop {
                match proto::frame_len(buf) {
                    Err(()) => {
                        return Err(RelayError::Protocol(
                            "neither STUN nor ChannelData on the stream".into(),
                        ))
                    }
                    Ok(Some(n)) if n > proto::MAX_FRAME => {
                        return Err(RelayError::Protocol("oversized frame".into()))
                    }
                    Ok(Some(n)) if buf.len() >= n => {
                        let rest = buf.split_off(n);
                        return Ok(std::mem::replace(buf, rest));
                    }
                    _ => {}
                }
                let mut chunk = [0u8; 16384];
                let n = r
                    .read(&mut chunk)
                    .await
                    .map_err(|e| RelayError::Unreachable(e.to_string()))?;
                if n == 0 {
                    return Err(RelayError::Unreachable(
                        "the relay closed the connection".into(),
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            },
        }
    }
}

/// The relay's address, IPv4 first.
pub(super) async fn resolve(uri: &RelayUri) -> Result<SocketAddr, RelayError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host(uri.authority())
        .await
        .map_err(|e| RelayError::Unreachable(format!("cannot resolve {}: {e}", uri.host)))?
        .collect();
    // IPv4 first, as for STUN: the peers' paths are IPv4 wherever a relay is needed most
    // (behind NATs), and a host without IPv6 routing would wait for a timeout.
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| RelayError::Unreachable(format!("{} has no address", uri.host)))
}

/// The transport to the relay the URI asks for: a connected UDP socket, or a TCP stream
/// (under TLS for `turns:`), split into its reading and writing halves.
pub(super) async fn connect(
    uri: &RelayUri,
    server: SocketAddr,
) -> Result<(Reader, Writer), RelayError> {
    Ok(match uri.transport {
        Transport::Udp => {
            let unspecified: IpAddr = if server.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let sock = UdpSocket::bind((unspecified, 0))
                .await
                .map_err(|e| RelayError::Unreachable(e.to_string()))?;
            // Connected, so an ICMP unreachable from a relay that is down comes back as
            // an error at once instead of a timeout.
            sock.connect(server)
                .await
                .map_err(|e| RelayError::Unreachable(e.to_string()))?;
            let sock = Arc::new(sock);
            (Reader::Udp(sock.clone(), server), Writer::Udp(sock))
        }
        Transport::Tcp | Transport::Tls => {
            let tcp = TcpStream::connect(server)
                .await
                .map_err(|e| RelayError::Unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let stream: BoxStream = if uri.transport == Transport::Tls {
                Box::new(tls_connect(&uri.host, tcp).await?)
            } else {
                Box::new(tcp)
            };
            let (r, w) = tokio::io::split(stream);
            (
                Reader::Stream(r, Vec::new()),
                Writer::Stream(Arc::new(tokio::sync::Mutex::new(w))),
            )
        }
    })
}

/// A TLS connection to `host` whose certificate the OS trust store vouches for: the same
/// roots the system's own tools trust (`SSL_CERT_FILE` and `SSL_CERT_DIR` override them,
/// as for OpenSSL).
async fn tls_connect(
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, RelayError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(RelayError::Tls(format!(
            "no trusted root certificates found on this system{}",
            found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    // One crypto provider, named: with two compiled in, the default builder panics.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| RelayError::Tls(format!("{host}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| RelayError::Tls(e.to_string()))
}

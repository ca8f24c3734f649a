//! Where a link's control socket lives, and who may use it.
//!
//! Two forms carry the one protocol of [`super::control`]:
//! - **A Unix socket**, the default on Unix: `$XDG_RUNTIME_DIR/p2pcopy/NAME.sock`, or
//!   `$TMPDIR/p2pcopy-UID/NAME.sock` where no runtime dir is set. The folder is made 0700
//!   and must be ours and private, the socket is 0600, and the daemon checks the caller's
//!   uid as well, so another local user is refused twice over.
//! - **A loopback port and a token file**, on Windows (no Unix sockets there for tokio)
//!   and anywhere `P2PCOPY_CONTROL=tcp` asks for it (which is how Linux tests this form).
//!   The daemon listens on 127.0.0.1, on a port the system picks, and writes `NAME.tcp`
//!   into the same private folder (`%LOCALAPPDATA%\p2pcopy` on Windows, whose ACL the user
//!   profile gives to that user alone): the address and a token of 32 random bytes. Any
//!   local process can reach the port, so the token is the lock: a caller's first line must
//!   be it, compared in constant time, or the answer is "permission denied". The token is
//!   never printed or logged; the file is written under a temporary name and renamed, so a
//!   client never reads half of it.
//!
//! A client needs no flag: it finds whichever file the daemon made. A daemon that died
//! leaves its file; the next `link` of that name replaces it when nothing answers there,
//! and never steals a live one.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::control::check_name;
use crate::error::Error;
use crate::shown::shown;

/// A control connection, whichever form carries it.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A control connection, boxed so the daemon and the clients do not care about the form.
pub type Stream = Box<dyn Duplex>;

/// Random bytes in a token: as many as a key, far beyond guessing over a local port.
const TOKEN_LEN: usize = 32;
/// How long a caller of the loopback form has to say its token before it is dropped.
const TOKEN_WAIT: Duration = Duration::from_secs(5);
/// How long `link` waits for an old port to answer before calling its file stale.
const LIVE_PROBE: Duration = Duration::from_millis(300);

/// The form a daemon listens in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// A Unix socket (Unix only).
    Unix,
    /// A loopback TCP port with a token file.
    Tcp,
}

impl Form {
    /// The platform's form, or the one `P2PCOPY_CONTROL` names (`unix` or `tcp`).
    pub fn chosen(var: Option<&str>) -> Result<Form, Error> {
        match var {
            None | Some("") if cfg!(unix) => Ok(Form::Unix),
            None | Some("") | Some("tcp") => Ok(Form::Tcp),
            Some("unix") if cfg!(unix) => Ok(Form::Unix),
            Some(other) => Err(Error::Usage(format!(
                "P2PCOPY_CONTROL is `tcp`{}, not {:?}",
                if cfg!(unix) { " or `unix`" } else { "" },
                shown(other)
            ))),
        }
    }
}

/// The secret of a loopback control port.
#[derive(Clone, PartialEq, Eq)]
struct Token([u8; TOKEN_LEN]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    fn random() -> Token {
        let mut bytes = [0; TOKEN_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(bytes)
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(s: &str) -> Option<Token> {
        if s.len() != 2 * TOKEN_LEN || !s.is_ascii() {
            return None;
        }
        let mut bytes = [0; TOKEN_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Token(bytes))
    }

    /// Whether a caller's first line shows this token. The time taken does not depend on
    /// where a wrong line differs, so the port cannot be asked for the token byte by byte.
    fn admits(&self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let want = self.hex();
        line.len() == want.len()
            && line
                .iter()
                .zip(want.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// What `NAME.tcp` says: `127.0.0.1:PORT TOKEN`.
fn port_file_text(addr: SocketAddr, token: &Token) -> String {
    format!("{addr} {}\n", token.hex())
}

/// Reads a port file; `None` for anything but a loopback address and a whole token (the
/// file sits in a private folder, but a client dials only loopback whatever it says).
fn parse_port_file(text: &str) -> Option<(SocketAddr, Token)> {
    let (addr, token) = text.trim_end().split_once(' ')?;
    let addr: SocketAddr = addr.parse().ok()?;
    addr.ip()
        .is_loopback()
        .then_some(())
        .and(Token::from_hex(token).map(|t| (addr, t)))
}

/// The folder of this user's control sockets: `$XDG_RUNTIME_DIR/p2pcopy` (Windows:
/// `%LOCALAPPDATA%\p2pcopy`), or `$TMPDIR/p2pcopy-UID` where that is not set.
pub fn socket_dir(base: Option<&Path>, uid: u32) -> PathBuf {
    match base.filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.join("p2pcopy"),
        None => std::env::temp_dir().join(format!("p2pcopy-{uid}")),
    }
}

/// This user's control folder.
fn user_dir() -> PathBuf {
    let var = if cfg!(windows) {
        "LOCALAPPDATA"
    } else {
        "XDG_RUNTIME_DIR"
    };
    let base = std::env::var_os(var).map(PathBuf::from);
    socket_dir(base.as_deref(), crate::sys::effective_uid().unwrap_or(0))
}

/// The two files a link named `name` may have in `dir`: its socket and its port file.
fn files(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), Error> {
    check_name(name)?;
    Ok((
        dir.join(format!("{name}.sock")),
        dir.join(format!("{name}.tcp")),
    ))
}

/// The names of this user's links (running ones, and the stale files of dead ones).
pub fn running_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(user_dir()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let name = name
                .strip_suffix(".sock")
                .or_else(|| name.strip_suffix(".tcp"))?
                .to_owned();
            check_name(&name).ok().map(|()| name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn not_running(name: &str) -> Error {
    Error::Control(format!(
        "no link named {name} is running (start one with `p2pcopy link --name {name}`)"
    ))
}

fn another_users(name: &str, path: &Path) -> Error {
    Error::Control(format!(
        "permission denied: the link {name} ({}) belongs to another user",
        path.display()
    ))
}

fn already_running(name: &str, path: &Path) -> Error {
    Error::Control(format!(
        "a link named {name} is already running ({} answers); pick another --name",
        path.display()
    ))
}

/// A daemon's listening control socket.
pub struct Listener {
    path: PathBuf,
    kind: Kind,
}

enum Kind {
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
    Tcp(TcpListener, Token),
}

/// A caller not yet let in.
pub struct Incoming {
    stream: Stream,
    check: Check,
}

enum Check {
    /// The caller's uid, as the kernel tells it (Unix sockets).
    #[cfg(unix)]
    Uid(Option<u32>),
    /// The token the caller's first line must show.
    Token(Token),
}

impl Listener {
    /// The socket or port file callers find this link by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next caller.
    pub async fn accept(&self) -> io::Result<Incoming> {
        match &self.kind {
            #[cfg(unix)]
            Kind::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                Ok(Incoming {
                    stream: Box::new(stream),
                    check: Check::Uid(uid),
                })
            }
            Kind::Tcp(listener, token) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Incoming {
                    stream: Box::new(stream),
                    check: Check::Token(token.clone()),
                })
            }
        }
    }
}

impl Incoming {
    /// Lets the caller in, or gives back its stream with the refusal to tell it.
    pub async fn admit(self, name: &str) -> Result<Stream, (Stream, Error)> {
        let denied = || {
            Error::Control(format!(
                "permission denied: the link {name} belongs to another user"
            ))
        };
        match self.check {
            #[cfg(unix)]
            Check::Uid(uid) if uid == Some(crate::sys::effective_uid().unwrap_or(0)) => {
                Ok(self.stream)
            }
            #[cfg(unix)]
            Check::Uid(_) => Err((self.stream, denied())),
            Check::Token(token) => {
                // Buffered: the request line may come in the same segment as the token.
                let mut stream = BufReader::new(self.stream);
                let mut line = Vec::new();
                let mut limited = (&mut stream).take(2 * TOKEN_LEN as u64 + 2);
                let read = limited.read_until(b'\n', &mut line);
                let got = tokio::time::timeout(TOKEN_WAIT, read).await;
                if matches!(got, Ok(Ok(_))) && token.admits(&line) {
                    Ok(Box::new(stream))
                } else {
                    Err((Box::new(stream), denied()))
                }
            }
        }
    }
}

/// Listens for the link `name` in `form`, in this user's control folder.
pub fn bind(name: &str, form: Form) -> Result<Listener, Error> {
    bind_in(&user_dir(), name, form)
}

/// [`bind`] in `dir`.
pub fn bind_in(dir: &Path, name: &str, form: Form) -> Result<Listener, Error> {
    let (sock, port_file) = files(dir, name)?;
    private_dir(dir)?;
    clear_stale(name, &sock, &port_file)?;
    match form {
        #[cfg(unix)]
        Form::Unix => Ok(Listener {
            kind: Kind::Unix(unix::bind(&sock)?),
            path: sock,
        }),
        #[cfg(not(unix))]
        Form::Unix => Err(Error::Usage("no Unix sockets on this platform".into())),
        Form::Tcp => {
            let cannot = |e: io::Error| Error::Control(format!("cannot listen on loopback: {e}"));
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(cannot)?;
            listener.set_nonblocking(true).map_err(cannot)?;
            let addr = listener.local_addr().map_err(cannot)?;
            let listener = TcpListener::from_std(listener).map_err(cannot)?;
            let token = Token::random();
            write_private(&port_file, &port_file_text(addr, &token))?;
            Ok(Listener {
                kind: Kind::Tcp(listener, token),
                path: port_file,
            })
        }
    }
}

/// Refuses a name whose link answers; removes what a dead one left.
fn clear_stale(name: &str, sock: &Path, port_file: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    unix::clear_stale(name, sock)?;
    #[cfg(not(unix))]
    let _ = sock;
    match std::fs::read_to_string(port_file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Ok(text) => {
            let answers = parse_port_file(&text).is_some_and(|(addr, _)| {
                std::net::TcpStream::connect_timeout(&addr, LIVE_PROBE).is_ok()
            });
            if answers {
                return Err(already_running(name, port_file));
            }
        }
        Err(_) => {}
    }
    tracing::info!(path = %port_file.display(), "replacing a stale port file");
    std::fs::remove_file(port_file).map_err(|e| {
        Error::Control(format!(
            "cannot remove the stale {}: {e}",
            port_file.display()
        ))
    })
}

/// Writes `text` to `path`, readable by this user only, whole or not at all.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tcp.new");
    let failed = |e: io::Error| Error::Control(format!("cannot write {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&tmp).map_err(failed)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(failed)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(failed)
}

/// Makes the control folder, or checks that an existing one is ours and private (on Unix;
/// elsewhere the user profile's ACL keeps it private, and a symlink is still refused).
fn private_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    return unix::private_dir(dir);
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Control(format!(
                "cannot make the control folder {}: {e}",
                dir.display()
            ))
        })?;
        match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(Error::Control(format!(
                "the control folder {} is not a folder; remove it",
                dir.display()
            ))),
        }
    }
}

/// Connects to the link `name` of this user, in whichever form it listens.
pub async fn connect(name: &str) -> Result<Stream, Error> {
    connect_in(&user_dir(), name).await
}

/// [`connect`] in `dir`.
pub async fn connect_in(dir: &Path, name: &str) -> Result<Stream, Error> {
    let (sock, port_file) = files(dir, name)?;
    #[cfg(unix)]
    match std::fs::symlink_metadata(&sock) {
        Ok(_) => return unix::connect(&sock, name).await,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(another_users(name, &sock))
        }
        Err(_) => {}
    }
    #[cfg(not(unix))]
    let _ = sock;
    let text = std::fs::read_to_string(&port_file).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => not_running(name),
        io::ErrorKind::PermissionDenied => another_users(name, &port_file),
        _ => Error::Control(format!("cannot read {}: {e}", port_file.display())),
    })?;
    let (addr, token) = parse_port_file(&text).ok_or_else(|| {
        Error::Control(format!(
            "{} is not a link's port file; remove it",
            port_file.display()
        ))
    })?;
    let mut stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => not_running(name),
        _ => Error::Control(format!("cannot reach the link {name}: {e}")),
    })?;
    let _ = stream.set_nodelay(true);
    let line = format!("{}\n", token.hex());
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| Error::Control(format!("cannot reach the link {name}: {e}")))?;
    Ok(Box::new(stream))
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use tokio::net::{UnixListener, UnixStream};

    use super::{already_running, another_users, not_running, Stream};
    use crate::error::Error;

    /// Makes the socket folder (0700) or checks that an existing one is ours and private.
    pub(super) fn private_dir(dir: &Path) -> Result<(), Error> {
        let made = std::fs::DirBuilder::new().mode(0o700).create(dir);
        if let Err(e) = made {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(Error::Control(format!(
                    "cannot make the control folder {}: {e}",
                    dir.display()
                )));
            }
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| {
            Error::Control(format!(
                "cannot read the control folder {}: {e}",
                dir.display()
            ))
        })?;
        let uid = crate::sys::effective_uid().unwrap_or(0);
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(Error::Control(format!(
                "the control folder {} is not a private folder of yours (owner uid {}, mode {:o}); remove it",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
        Ok(())
    }

    /// A socket left by a dead daemon (nobody answers) is removed; a live one is not stolen.
    pub(super) fn clear_stale(name: &str, path: &Path) -> Result<(), Error> {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::Control(format!(
                "{} is in the way and is not a socket; remove it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(already_running(name, path));
        }
        tracing::info!(path = %path.display(), "replacing a stale control socket");
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Listens on `path`, mode 0600.
    pub(super) fn bind(path: &Path) -> Result<UnixListener, Error> {
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::Control(format!("cannot listen on {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Control(format!("cannot make {} private: {e}", path.display())))?;
        Ok(listener)
    }

    /// Connects to the link `name`'s socket, with a clear error for a missing link and for
    /// another user's.
    pub(super) async fn connect(path: &Path, name: &str) -> Result<Stream, Error> {
        match UnixStream::connect(path).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(e) => Err(match e.kind() {
                std::io::ErrorKind::PermissionDenied => another_users(name, path),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    not_running(name)
                }
                _ => Error::Control(format!("cannot reach the link {name}: {e}")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_the_platforms_unless_asked() {
        let native = if cfg!(unix) { Form::Unix } else { Form::Tcp };
        assert_eq!(Form::chosen(None).unwrap(), native);
        assert_eq!(Form::chosen(Some("")).unwrap(), native);
        assert_eq!(Form::chosen(Some("tcp")).unwrap(), Form::Tcp);
        let e = Form::chosen(Some("pipe\x1b[2J")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }

    #[test]
    fn a_token_admits_itself_only() {
        let t = Token::random();
        assert_ne!(t, Token::random());
        let hex = t.hex();
        assert_eq!(Token::from_hex(&hex), Some(t.clone()));
        assert!(t.admits(format!("{hex}\n").as_bytes()));
        assert!(t.admits(format!("{hex}\r\n").as_bytes()));
        let mut other = hex.clone().into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!t.admits(&other));
        assert!(!t.admits(&hex.as_bytes()[..63]));
        assert!(!t.admits(format!("{hex}0").as_bytes()));
        assert!(!t.admits(b""));
        assert!(format!("{t:?}").find(&hex[..8]).is_none(), "never printed");
        for bad in ["", "zz", &hex[..62], &"é".repeat(32)] {
            assert_eq!(Token::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_port_file_names_loopback_only() {
        let t = Token::random();
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let text = port_file_text(addr, &t);
        assert_eq!(parse_port_file(&text), Some((addr, t.clone())));
        let away = port_file_text("192.0.2.1:4321".parse().unwrap(), &t);
        assert_eq!(parse_port_file(&away), None);
        assert_eq!(parse_port_file("127.0.0.1:4321"), None);
        assert_eq!(parse_port_file("127.0.0.1:4321 abc"), None);
    }

    #[test]
    fn the_runtime_dir_is_preferred() {
        assert_eq!(
            socket_dir(Some(Path::new("/run/user/1000")), 1000),
            Path::new("/run/user/1000/p2pcopy")
        );
        let fallback = socket_dir(None, 1000);
        assert!(fallback.ends_with("p2pcopy-1000"), "{fallback:?}");
        assert_eq!(socket_dir(Some(Path::new("")), 7), socket_dir(None, 7));
    }

    /// One request line over a connection `connect_in` made, answered by `admit`.
    async fn round_trip(listener: &Listener, dir: &Path, name: &str) -> Result<String, Error> {
        let mut client = connect_in(dir, name).await?;
        client.write_all(b"hello\n").await.unwrap();
        let incoming = listener.accept().await.unwrap();
        let mut served = incoming.admit(name).await.map_err(|(_, e)| e)?;
        let mut line = String::new();
        BufReader::new(&mut served)
            .read_line(&mut line)
            .await
            .unwrap();
        Ok(line)
    }

    #[tokio::test]
    async fn a_loopback_port_lets_in_the_token_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p2pcopy");
        let live = bind_in(&dir, "t", Form::Tcp).unwrap();
        assert_eq!(live.path(), dir.join("t.tcp"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(live.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(round_trip(&live, &dir, "t").await.unwrap(), "hello\n");
        let (addr, _) = parse_port_file(&std::fs::read_to_string(live.path()).unwrap()).unwrap();

        // A caller without the token, or with a wrong one, is refused.
        for first in [&b"not the token\n"[..], &[b'0'; 64], b""] {
            let mut stranger = TcpStream::connect(addr).await.unwrap();
            stranger.write_all(first).await.unwrap();
            stranger.shutdown().await.unwrap();
            let (_, e) = live.accept().await.unwrap().admit("t").await.err().unwrap();
            assert!(e.to_string().contains("permission denied"), "{e}");
            assert_eq!(e.exit_code(), 11);
        }

        // Not stolen while it answers; replaced once its daemon is gone.
        let e = bind_in(&dir, "t", Form::Tcp).err().unwrap();
        assert!(e.to_string().contains("already running"), "{e}");
        #[cfg(unix)]
        assert!(
            bind_in(&dir, "t", Form::Unix).is_err(),
            "not in the other form either"
        );
        drop(live);
        assert!(dir.join("t.tcp").exists());
        let again = bind_in(&dir, "t", Form::Tcp).unwrap();
        assert_eq!(round_trip(&again, &dir, "t").await.unwrap(), "hello\n");
        let e = connect_in(&dir, "none").await.err().unwrap();
        assert!(e.to_string().contains("no link named none"), "{e}");
        std::fs::write(dir.join("odd.tcp"), "10.0.0.1:1 00\n").unwrap();
        let e = connect_in(&dir, "odd").await.err().unwrap();
        assert!(e.to_string().contains("not a link's port file"), "{e}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p2pcopy");
        let path = dir.join("t.sock");
        let live = bind_in(&dir, "t", Form::Unix).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        // (Before the probes below: each leaves a connection in the listener's queue.)
        assert_eq!(round_trip(&live, &dir, "t").await.unwrap(), "hello\n");
        let e = bind_in(&dir, "t", Form::Unix).err().unwrap();
        assert!(e.to_string().contains("already running"), "{e}");
        assert_eq!(e.exit_code(), 11);
        assert!(
            bind_in(&dir, "t", Form::Tcp).is_err(),
            "not in the other form either"
        );
        drop(live);
        // The dead daemon's socket file is still there: replaced, and it answers again.
        assert!(path.exists());
        let again = bind_in(&dir, "t", Form::Unix).unwrap();
        assert_eq!(round_trip(&again, &dir, "t").await.unwrap(), "hello\n");
        let missing = connect_in(&dir, "none").await.err().unwrap();
        assert!(
            missing.to_string().contains("no link named none"),
            "{missing}"
        );
        // A folder others can enter is refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = bind_in(&dir, "u", Form::Unix).err().unwrap();
        assert!(e.to_string().contains("not a private folder"), "{e}");
    }
}

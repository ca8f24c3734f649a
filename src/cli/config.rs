//! The config file: relays with their credentials, STUN and NTP servers, the receiver's
//! default `--output`, `--timeout`.
//!
//! It lives in the platform's config directory (`~/.config/p2pcopy/config.toml` on Linux,
//! `~/Library/Application Support/p2pcopy/config.toml` on macOS, `%APPDATA%\p2pcopy\
//! config.toml` on Windows) or wherever `--config FILE` says. Flags override it: its values
//! become the flags' defaults before the command line is parsed ([`apply`]), so `--help`
//! shows them too. A file that does not parse gets one line naming the file, the line and
//! the key.
//!
//! ```toml
//! stun_servers = ["stun.example.org:3478"]
//! ntp_servers = ["ntp.example.org"]
//! output = "/home/me/Downloads"
//! timeout = 300
//!
//! [[relay]]
//! uri = "turns:turn.example.org:443"
//! user = "alice"
//! password = "..."        # or: secret = "..." (coturn static-auth-secret)
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::relay::{Credentials, RelayConfig, RelayUri, Secret};

/// The file's name inside the config directory.
pub const FILE_NAME: &str = "config.toml";

/// What the file holds; every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--stun-server` defaults.
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// `--ntp-server` defaults.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    /// The receiver's default `--output`.
    pub output: Option<PathBuf>,
    /// The default `--timeout`, in seconds.
    pub timeout: Option<u64>,
    /// Relays, in order of preference.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayEntry>,
}

/// One `[[relay]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// `turn:` or `turns:` URI.
    pub uri: String,
    /// User name (long-term), or the name REST credentials are made for.
    pub user: Option<String>,
    /// Long-term password.
    pub password: Option<Secret>,
    /// TURN REST shared secret (coturn `static-auth-secret`).
    pub secret: Option<Secret>,
}

/// Why the config file cannot be used: one line, naming the file (and the line and key
/// when the file does not parse).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read (a missing default file is not an error).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key or value is wrong.
    #[error("{}:{line}: {key}{message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when the parser did not say).
        line: usize,
        /// `key: ` when known, else empty.
        key: String,
        /// What is wrong, on one line.
        message: String,
    },
}

impl Config {
    /// Reads `text` (the contents of `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        // URIs and credentials are checked here, so a bad relay is reported with its line.
        for r in &cfg.relays {
            let line_of = |needle: &str| {
                text.find(needle)
                    .map_or(0, |at| text[..at].matches('\n').count() + 1)
            };
            let bad = |message: String| ConfigError::Parse {
                path: path.to_owned(),
                line: line_of(&r.uri),
                key: "uri: ".into(),
                message,
            };
            r.uri.parse::<RelayUri>().map_err(|e| bad(e.to_string()))?;
            if r.password.is_some() && r.secret.is_some() {
                return Err(bad("a relay takes a password or a secret, not both".into()));
            }
        }
        Ok(cfg)
    }

    /// The relays, each with its credentials; a relay without a password or secret takes
    /// the ones the flags or the environment give (`fallback`), so they can stay out of the
    /// file.
    pub fn relays(&self, fallback: Option<&Credentials>) -> Vec<RelayConfig> {
        self.relays
            .iter()
            .filter_map(|r| {
                let uri = r.uri.parse().ok()?;
                let user = r.user.clone();
                let creds = match (&r.password, &r.secret) {
                    (Some(p), _) => Credentials::LongTerm {
                        user: user.unwrap_or_default(),
                        password: p.clone(),
                    },
                    (None, Some(s)) => Credentials::Rest {
                        user: user.unwrap_or_default(),
                        secret: s.clone(),
                    },
                    (None, None) => match (fallback, user) {
                        (Some(Credentials::LongTerm { password, .. }), Some(user)) => {
                            Credentials::LongTerm {
                                user,
                                password: password.clone(),
                            }
                        }
                        (Some(Credentials::Rest { secret, .. }), Some(user)) => Credentials::Rest {
                            user,
                            secret: secret.clone(),
                        },
                        (Some(c), None) => c.clone(),
                        (None, user) => Credentials::LongTerm {
                            user: user.unwrap_or_default(),
                            password: Secret::new(""),
                        },
                    },
                };
                Some(RelayConfig { uri, creds })
            })
            .collect()
    }

    /// Whether the file holds a password or secret.
    pub fn has_secrets(&self) -> bool {
        self.relays
            .iter()
            .any(|r| r.password.is_some() || r.secret.is_some())
    }
}

/// One line from toml's error: its span gives the line, and the key is what stands before
/// `=` on that line (toml's message names the key itself for unknown or missing ones).
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, key) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or_default();
            let key = line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"'))
                .filter(|k| !k.is_empty() && !k.starts_with('['))
                .map(|k| format!("{k}: "))
                .unwrap_or_default();
            (line, key)
        }
        None => (0, String::new()),
    };
    let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    // serde quotes the value it could not take; a mistyped secret must not be printed.
    if key == "password: " || key == "secret: " {
        message = "must be a string in quotes (the value is not shown)".into();
    }
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        key,
        message,
    }
}

/// The platform's config file, e.g. `~/.config/p2pcopy/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("p2pcopy").join(FILE_NAME))
}

/// Loads `explicit` (from `--config`; it must exist), else the default file if there is
/// one.
pub fn load(explicit: Option<&Path>) -> Result<Option<(PathBuf, Config)>, ConfigError> {
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_owned(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let cfg = Config::parse(&path, &text)?;
    Ok(Some((path, cfg)))
}

/// `--config FILE` or `--config=FILE` among the arguments, read before clap parses them
/// (the file's values become clap's defaults).
pub fn config_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            return None;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Makes the file's values the defaults of the flags they stand for, in every subcommand
/// that has them; a flag given on the command line still wins.
pub fn apply(mut cmd: clap::Command, cfg: &Config) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |mut sub| {
            let has = |sub: &clap::Command, id: &str| sub.get_arguments().any(|a| a.get_id() == id);
            if !cfg.stun_servers.is_empty() && has(&sub, "stun_servers") {
                let v = cfg.stun_servers.clone();
                sub = sub.mut_arg("stun_servers", |a| a.default_values(v));
            }
            if !cfg.ntp_servers.is_empty() && has(&sub, "ntp_servers") {
                let v = cfg.ntp_servers.clone();
                sub = sub.mut_arg("ntp_servers", |a| a.default_values(v));
            }
            if let Some(t) = cfg.timeout.filter(|_| has(&sub, "timeout")) {
                sub = sub.mut_arg("timeout", |a| a.default_value(t.to_string()));
            }
            if let Some(o) = cfg.output.clone().filter(|_| has(&sub, "output")) {
                sub = sub.mut_arg("output", |a| a.default_value(o.into_os_string()));
            }
            sub
        });
    }
    cmd
}

/// Why the command line (with the config file) cannot be used.
#[derive(Debug)]
pub enum ParseError {
    /// The config file: one line, `p2pcopy: ` goes before it.
    Config(ConfigError),
    /// The flags, as clap reports them (help and version too).
    Flags(clap::Error),
    /// The config file did not load, but the command reads none (`completions`, `man`):
    /// run it.
    NoConfigNeeded(Box<super::Cli>),
}

/// Parses the command line with the config file's values as the flags' defaults, and
/// hands the file's relays to the subcommands that take `--relay` flags. Also returns the
/// file's path and a warning about it, if there is one.
pub fn parse_args(args: Vec<OsString>) -> Result<(super::Cli, Option<String>), ParseError> {
    use clap::{CommandFactory, FromArgMatches};
    let loaded = match load(config_arg(&args).as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => return Err(without_config(args, e)),
    };
    let mut cmd = super::Cli::command();
    if let Some((_, cfg)) = &loaded {
        cmd = apply(cmd, cfg);
    }
    let mut cli = cmd
        .try_get_matches_from(args)
        .and_then(|m| super::Cli::from_arg_matches(&m))
        .map_err(ParseError::Flags)?;
    let Some((path, cfg)) = loaded else {
        return Ok((cli, None));
    };
    let relay_args = match &mut cli.command {
        super::Command::Sender(a) => Some(&mut a.net.relay),
        super::Command::Receiver(a) => Some(&mut a.net.relay),
        super::Command::Doctor(a) => Some(&mut a.relay),
        _ => None,
    };
    if let Some(r) = relay_args {
        r.from_config = cfg.relays(r.fallback_credentials().as_ref());
    }
    Ok((cli, permission_warning(&path, &cfg)))
}

/// A config file that does not load must not keep a user from `--help`, `--version`,
/// `completions` or `man` (which read no config): those go ahead; anything else gets the
/// config file's error.
fn without_config(args: Vec<OsString>, config_error: ConfigError) -> ParseError {
    use clap::error::ErrorKind;
    use clap::{CommandFactory, FromArgMatches};
    let parsed = super::Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| super::Cli::from_arg_matches(&m));
    match parsed {
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            ParseError::Flags(e)
        }
        Ok(cli)
            if matches!(
                cli.command,
                super::Command::Completions { .. } | super::Command::Man
            ) =>
        {
            ParseError::NoConfigNeeded(Box::new(cli))
        }
        _ => ParseError::Config(config_error),
    }
}

/// A warning when the file holds a credential others can read (Unix permissions).
pub fn permission_warning(path: &Path, cfg: &Config) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        if cfg.has_secrets() && mode & 0o077 != 0 {
            return Some(format!(
                "{} holds a relay password or secret and others may read it (chmod 600 it)",
                path.display()
            ));
        }
    }
    let _ = (path, cfg);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/home/u/.config/p2pcopy/config.toml"), text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file() {
        let cfg = parse(
            r#"
stun_servers = ["stun.example.org:3478"]
ntp_servers = ["ntp.example.org"]
output = "/srv/in"
timeout = 300

[[relay]]
uri = "turns:turn.example.org:443"
user = "alice"
password = "pw"

[[relay]]
uri = "turn:turn2.example.org"
secret = "s"
"#,
        )
        .unwrap();
        assert_eq!(cfg.timeout, Some(300));
        assert_eq!(cfg.output, Some(PathBuf::from("/srv/in")));
        let r = cfg.relays(None);
        assert_eq!(r[0].uri.port, 443);
        assert_eq!(
            r[0].creds,
            Credentials::LongTerm {
                user: "alice".into(),
                password: Secret::new("pw")
            }
        );
        assert_eq!(
            r[1].creds,
            Credentials::Rest {
                user: String::new(),
                secret: Secret::new("s")
            }
        );
        assert!(cfg.has_secrets());
        assert!(!format!("{cfg:?}").contains("\"pw\""));
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn credentials_can_stay_out_of_the_file() {
        let cfg = parse("[[relay]]\nuri = \"turn:h\"\nuser = \"bob\"\n").unwrap();
        let env = Credentials::LongTerm {
            user: "ignored".into(),
            password: Secret::new("from-env"),
        };
        assert_eq!(
            cfg.relays(Some(&env))[0].creds,
            Credentials::LongTerm {
                user: "bob".into(),
                password: Secret::new("from-env")
            }
        );
    }

    #[test]
    fn bad_files_get_one_line_with_file_line_and_key() {
        let file = "/home/u/.config/p2pcopy/config.toml";
        for (text, want) in [
            (
                "timeout = 300\noutput = 5\n",
                format!("{file}:2: output: invalid type: integer `5`"),
            ),
            (
                "tmeout = 3\n",
                format!("{file}:1: tmeout: unknown field `tmeout`"),
            ),
            (
                "timeout = 30\n\n[[relay]]\nuri = \"stun:x\"\n",
                format!("{file}:4: uri: a relay URI starts with turn: or turns:"),
            ),
            (
                "[[relay]]\nuser = \"a\"\n",
                format!("{file}:1: missing field `uri`"),
            ),
            (
                "[[relay]]\nuri = \"turn:h\"\npassword = \"p\"\nsecret = \"s\"\n",
                format!("{file}:2: uri: a relay takes a password or a secret"),
            ),
            ("timeout = \n", format!("{file}:1: timeout: ")),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(&want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // The values of secrets never appear in the message.
        let e = parse("[[relay]]\nuri = \"turn:h\"\npassword = 12345678\n").unwrap_err();
        assert!(!e.contains("12345678"), "{e}");
    }

    #[test]
    fn the_config_arg_is_found_before_parsing() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_arg(&args(&["p2pcopy", "doctor", "--config", "/x.toml"])),
            Some(PathBuf::from("/x.toml"))
        );
        assert_eq!(
            config_arg(&args(&["p2pcopy", "--config=/y.toml", "doctor"])),
            Some(PathBuf::from("/y.toml"))
        );
        assert_eq!(config_arg(&args(&["p2pcopy", "--", "--config", "z"])), None);
    }

    #[test]
    fn file_values_are_defaults_and_flags_win() {
        use clap::{CommandFactory, FromArgMatches};
        let cfg = Config {
            stun_servers: vec!["stun.cfg:3478".into()],
            timeout: Some(33),
            output: Some("/srv/in".into()),
            ..Config::default()
        };
        let parse = |args: &[&str]| {
            let m = apply(crate::cli::Cli::command(), &cfg)
                .try_get_matches_from(args)
                .unwrap();
            crate::cli::Cli::from_arg_matches(&m).unwrap()
        };
        let cli = parse(&["p2pcopy", "receiver"]);
        let crate::cli::Command::Receiver(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.output, PathBuf::from("/srv/in"));
        assert_eq!(r.net.timeout, 33);
        assert_eq!(r.net.stun_servers, ["stun.cfg:3478"]);
        let cli = parse(&[
            "p2pcopy",
            "receiver",
            "--timeout",
            "5",
            "-o",
            "here",
            "--stun-server",
            "s:1",
        ]);
        let crate::cli::Command::Receiver(r) = cli.command else {
            panic!()
        };
        assert_eq!((r.net.timeout, r.output.to_str()), (5, Some("here")));
        assert_eq!(r.net.stun_servers, ["s:1"]);
        // doctor has no --timeout or --output: only what it has is touched.
        let cli = parse(&["p2pcopy", "doctor"]);
        let crate::cli::Command::Doctor(d) = cli.command else {
            panic!()
        };
        assert_eq!(d.stun_servers, ["stun.cfg:3478"]);
    }
}

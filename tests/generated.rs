//! `p2pcopy completions SHELL` and `p2pcopy man`: made from the same flag definitions the
//! binary parses, so they name today's subcommands and flags.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pcopy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn completions_name_the_subcommands_and_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, text) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        // fish spells a long flag `-l localport`, the others `--localport`.
        for word in [
            "sender",
            "receiver",
            "doctor",
            "stun-server",
            "localport",
            "json",
        ] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
    let (code, text) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error");
    assert!(text.is_empty());
}

#[test]
fn the_man_page_is_roff_with_every_subcommand() {
    let (code, text) = run(&["man"]);
    assert_eq!(code, 0);
    assert!(text.contains(".TH p2pcopy 1"), "{text}");
    for word in [
        "sender",
        "receiver",
        "doctor",
        "stun\\-server",
        "completions",
    ] {
        assert!(text.contains(word), "the man page lacks {word}");
    }
}

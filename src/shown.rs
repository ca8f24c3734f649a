//! Text from elsewhere, made safe to show on a terminal.
//!
//! File names, link targets and the reason a peer gives when it closes come from a peer we
//! do not trust, and a name like `evil\e]0;PWNED\a\e[2J` would set the window title and
//! clear the screen if it reached the terminal raw. Local names can be just as odd. [`shown`]
//! writes every character a terminal would act on, or that would make a line read other than
//! it is, as a visible escape instead, on one line.
//!
//! The escaping happens where text meets the screen, and only there: the CLI's writer (`cli::output`)
//! passes every human line (`say`, `print`, `fail`) through it, and the progress bar the
//! current file's name. Callers hand over raw text, so nothing is escaped twice and `--json`
//! keeps the exact names (its writer turns the same characters into JSON's own `\uXXXX`
//! escapes, which a program parses back exactly). p2pcopy's own words hold no backslash or
//! control character, so escaping a whole line changes only what came from elsewhere, and a
//! message added later is covered without anyone remembering to.
//!
//! Log lines (`tracing`) are the exception that callers handle: tracing-subscriber neutralises
//! ESC, BEL and C1 itself but not line breaks or bidi controls, so a log field holding a name,
//! a router's error text or a stranger's close reason is written as `%shown(..)`.

use std::fmt;

/// `s` as a terminal may show it (see [`shown`]).
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

/// `s` with every character a terminal would act on written as a visible escape:
///
/// - C0 controls (tabs and line breaks too: what is shown is one line), DEL and C1
///   controls: `\e` (ESC), `\a` (BEL), `\t`, `\n`, `\r`, else `\u{7f}`-style hex;
/// - the bidirectional embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069,
///   which reorder the text after them (`exe.txt` shown as `txt.exe`), as `\u{202e}`;
/// - the invisible direction marks U+200E, U+200F and U+061C: they cannot reverse a run, but
///   they do move neutral characters (dots, digits, brackets) around them, and being
///   invisible they let two different names look the same; an honest name rarely holds one;
/// - the line and paragraph separators U+2028 and U+2029, which some renderers break on;
/// - the backslash itself, as `\\`, so an escape in the output always means the character
///   and never a name that happens to contain `\e`.
///
/// Everything else, accents, scripts and emoji included (and the zero-width joiners they
/// need), is shown as it is.
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        // Write the runs between escapes in one piece: names are mostly plain.
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let Some(esc) = escape(c) else { continue };
            f.write_str(&s[plain..i])?;
            match esc {
                Escape::Named(name) => f.write_str(name)?,
                Escape::Hex => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            plain = i + c.len_utf8();
        }
        f.write_str(&s[plain..])
    }
}

enum Escape {
    Named(&'static str),
    Hex,
}

/// How `c` is written, if not as itself.
fn escape(c: char) -> Option<Escape> {
    Some(match c {
        '\\' => Escape::Named("\\\\"),
        '\x1b' => Escape::Named("\\e"),
        '\x07' => Escape::Named("\\a"),
        '\t' => Escape::Named("\\t"),
        '\n' => Escape::Named("\\n"),
        '\r' => Escape::Named("\\r"),
        _ if is_unsafe(c) => Escape::Hex,
        _ => return None,
    })
}

/// Whether a terminal would act on `c`, or it would make a line read other than it is:
/// the characters [`shown`] escapes, besides the backslash. `--json` writes them as
/// `\uXXXX` escapes too.
pub fn is_unsafe(c: char) -> bool {
    // C0, DEL and C1 are exactly `char::is_control`.
    c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(s: &str) -> String {
        shown(s).to_string()
    }

    #[test]
    fn plain_names_are_untouched() {
        for s in [
            "",
            "03183u.tif",
            "Grüße 日本.txt",
            "project/data/x (1).tif",
            "שלום.txt",
            "مرحبا.pdf",
            "👩‍👩‍👧 family.jpg",         // zero-width joiners between the emoji
            "e\u{301}te\u{301}.txt", // combining accents (macOS NFD names)
            "a'b\"c`d$e%f{g}h",
        ] {
            assert_eq!(show(s), s);
        }
    }

    #[test]
    fn every_class_is_escaped_visibly() {
        let table = [
            // C0, with the usual names where there is one
            ("\x1b", r"\e"),
            ("\x07", r"\a"),
            ("\t", r"\t"),
            ("\n", r"\n"),
            ("\r", r"\r"),
            ("\0", r"\u{0}"),
            ("\x08", r"\u{8}"),
            ("\x0c", r"\u{c}"),
            ("\x1f", r"\u{1f}"),
            // DEL and C1 (U+009B is a one-character CSI on some terminals)
            ("\x7f", r"\u{7f}"),
            ("\u{80}", r"\u{80}"),
            ("\u{9b}", r"\u{9b}"),
            ("\u{9d}", r"\u{9d}"),
            ("\u{9f}", r"\u{9f}"),
            // bidi embeddings, overrides, isolates
            ("\u{202a}", r"\u{202a}"),
            ("\u{202b}", r"\u{202b}"),
            ("\u{202c}", r"\u{202c}"),
            ("\u{202d}", r"\u{202d}"),
            ("\u{202e}", r"\u{202e}"),
            ("\u{2066}", r"\u{2066}"),
            ("\u{2067}", r"\u{2067}"),
            ("\u{2068}", r"\u{2068}"),
            ("\u{2069}", r"\u{2069}"),
            // direction marks, line and paragraph separators
            ("\u{200e}", r"\u{200e}"),
            ("\u{200f}", r"\u{200f}"),
            ("\u{61c}", r"\u{61c}"),
            ("\u{2028}", r"\u{2028}"),
            ("\u{2029}", r"\u{2029}"),
            // the escape character itself, so the output cannot be mistaken
            ("\\", r"\\"),
            (r"\e", r"\\e"),
        ];
        for (raw, want) in table {
            assert_eq!(show(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn neighbours_of_the_escaped_ranges_are_kept() {
        for c in [
            ' ', '~', '\u{a0}', '\u{201f}', '\u{202f}', '\u{2065}', '\u{206a}',
        ] {
            assert_eq!(show(&c.to_string()), c.to_string(), "{c:?}");
        }
    }

    #[test]
    fn the_issue_names_come_out_on_one_inert_line() {
        let evil = "evil\x1b]0;PWNED\x07\x1b[2J\x1b[31mred.txt";
        assert_eq!(show(evil), r"evil\e]0;PWNED\a\e[2J\e[31mred.txt");
        assert_eq!(show("invoice\u{202e}fdp.exe"), r"invoice\u{202e}fdp.exe");
        assert_eq!(
            show("dir/a\nReceived fake.txt\r"),
            r"dir/a\nReceived fake.txt\r"
        );
        // Nothing a terminal acts on survives, whatever the input.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = show(&all);
        assert!(!out.chars().any(is_unsafe));
    }

    #[cfg(unix)]
    #[test]
    fn lossy_paths_show_the_replacement_character() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"bad\xff\x1b.txt"));
        assert_eq!(show(&p.to_string_lossy()), "bad\u{fffd}\\e.txt");
    }
}

//! The output tree around the files: every path confined, the folders made and what is
//! already here found before the plan; links and folder times after the last file.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::Error;
use crate::manifest::{confine, link_stays_inside};
use crate::transfer::store::{Held, Store};
use crate::wire::{Entry, EntryKind};

/// Confines every path, creates the folders, and finds what is already here. Runs on a
/// blocking thread.
pub(super) fn prepare(
    store: &Store,
    entries: &[Entry],
    verified: &HashMap<(PathBuf, u64), blake3::Hash>,
) -> Result<(Vec<PathBuf>, HashMap<u32, Held>), Error> {
    let mut rels = Vec::with_capacity(entries.len());
    for e in entries {
        let refuse = |why: String| Error::Protocol(format!("refused an unsafe entry: {why}"));
        let rel = confine(&e.path).map_err(|err| refuse(err.to_string()))?;
        if e.kind == EntryKind::Symlink && !link_stays_inside(&e.path, &e.target) {
            return Err(refuse(format!(
                "link \"{}\" points outside the output folder (\"{}\")",
                e.path, e.target
            )));
        }
        if e.kind != EntryKind::File && e.size != 0 {
            return Err(refuse(format!(
                "\"{}\" is not a file but has a size",
                e.path
            )));
        }
        rels.push(rel);
    }
    // Sorted indices find a path announced twice without a second copy of every path.
    let mut order: Vec<u32> = (0..rels.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| rels[a as usize].cmp(&rels[b as usize]));
    if let Some(w) = order
        .windows(2)
        .find(|w| rels[w[0] as usize] == rels[w[1] as usize])
    {
        return Err(Error::Protocol(format!(
            "refused an unsafe entry: \"{}\" is announced twice",
            entries[w[1] as usize].path
        )));
    }
    drop(order);
    let mut held = HashMap::new();
    // Files come folder by folder: each folder is checked once per run of its files, not
    // once per file (a stat per path component each time).
    let mut made = None;
    for (i, (e, rel)) in entries.iter().zip(&rels).enumerate() {
        match e.kind {
            EntryKind::Dir => {
                store.make_dir(rel)?;
            }
            EntryKind::File => {
                if made != Some(rel.parent()) {
                    store.make_parent(rel)?;
                    made = Some(rel.parent());
                }
                let h = match verified.get(&(rel.clone(), e.size)) {
                    Some(hash) => Some(Held {
                        offset: e.size,
                        hash: *hash,
                        hasher: None,
                        complete: true,
                    }),
                    None => store.held(rel, e)?,
                };
                if let Some(h) = h {
                    held.insert(i as u32, h);
                }
            }
            EntryKind::Symlink => {}
        }
    }
    Ok((rels, held))
}

/// After all files: links (last, so nothing is ever written through one) and folder
/// times, deepest first. Returns the links that got another name.
pub(super) fn finish_tree(
    store: &Store,
    entries: &[Entry],
    rels: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut renamed = Vec::new();
    let tree = || entries.iter().zip(rels);
    for (e, rel) in tree().filter(|(e, _)| e.kind == EntryKind::Symlink) {
        store.make_parent(rel)?;
        let at = store.make_link(rel, &e.target)?;
        if at != store.root().join(rel) {
            renamed.push((e.path.clone(), at));
        }
    }
    for (e, rel) in tree().rev().filter(|(e, _)| e.kind == EntryKind::Dir) {
        store.finish_dir(rel, e)?;
    }
    Ok(renamed)
}

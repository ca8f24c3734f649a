//! Keeps a link to a peer and sends both ways over it, as a program using the library
//! would: `cargo run --example link -- dial DIR` on one machine and
//! `cargo run --example link -- accept DIR` on the other (one side dials, the other
//! accepts), exchange the printed tickets once, then type a path on either side to send
//! it; what the peer sends lands in DIR. The link reconnects by itself when the path dies.

use std::path::PathBuf;

use p2pcopy::events::Event;
use p2pcopy::ticket::{Role, Ticket};
use p2pcopy::transfer::check_output_dir;
use p2pcopy::{DuplexOptions, Session, SessionConfig};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let role = match args.next().as_deref() {
        Some("dial") => Role::Sender,
        Some("accept") => Role::Receiver,
        _ => return Err("usage: link dial|accept DIR".into()),
    };
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    check_output_dir(&dir)?;
    let events = |e: &Event| match e {
        Event::Connected { remote, rtt_ms, .. } => eprintln!("connected to {remote}, {rtt_ms} ms"),
        Event::Reconnecting { reason, .. } => eprintln!("path lost ({reason}); reconnecting"),
        Event::Warning { message } => eprintln!("warning: {message}"),
        _ => {}
    };
    let session = Session::bind(SessionConfig::new(role), events).await?;
    println!("Give your peer this ticket: {}", session.ticket());
    eprint!("Paste your peer's ticket: ");
    let mut lines = stdin_lines();
    let peer: Ticket = lines.recv().await.ok_or("no ticket")?.parse()?;
    let (link, mut arrivals) = session
        .connect(peer)
        .await?
        .into_duplex(DuplexOptions::new(dir));
    eprintln!("Type a path to send it; Ctrl-D closes the link.");
    let link = std::sync::Arc::new(link);
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(path) = line else { break };
                // Each send runs on its own: several may be under way, and the peer's
                // jobs keep arriving meanwhile.
                let link = link.clone();
                tokio::spawn(async move {
                    match link.send(&[PathBuf::from(path.trim())]).await {
                        Ok(r) => println!("sent {} files, {} bytes, verified", r.files, r.total),
                        Err(e) => println!("not sent: {e}"),
                    }
                });
            }
            arrival = arrivals.next() => {
                let Some(arrival) = arrival else { break };
                for (path, hash) in &arrival.saved {
                    println!("received {path} (BLAKE3 {hash})");
                }
                if let Err(e) = arrival.result {
                    println!("a job from the peer failed: {e}");
                }
            }
        }
    }
    if let Ok(link) = std::sync::Arc::try_unwrap(link) {
        link.close().await;
    }
    Ok(())
}

/// Standard input's lines, read on a thread of their own.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

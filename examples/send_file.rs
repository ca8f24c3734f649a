//! Sends a file or folder to a peer, as a program using the library would:
//! `cargo run --example send_file -- PATH`, give the printed ticket to the peer (who runs
//! the `receive` example or `p2pcopy receiver`), then paste theirs here.

use p2pcopy::events::Event;
use p2pcopy::ticket::{Role, Ticket};
use p2pcopy::transfer::{Outgoing, Silent};
use p2pcopy::{Session, SessionConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).ok_or("usage: send_file PATH")?;
    let mut job = Outgoing::new(p2pcopy::manifest::scan(&[path.into()])?);
    // Every event of the run arrives here, in order (the same ones `--json` prints).
    let events = |e: &Event| match e {
        Event::Connected { remote, rtt_ms, .. } => eprintln!("connected to {remote}, {rtt_ms} ms"),
        Event::Reconnecting { reason, .. } => eprintln!("path lost ({reason}); reconnecting"),
        Event::FileDone { path, blake3, .. } => eprintln!("{path}: verified, BLAKE3 {blake3}"),
        _ => {}
    };
    let session = Session::bind(SessionConfig::new(Role::Sender), events).await?;
    println!("Give your peer this ticket: {}", session.ticket());

    eprint!("Paste your peer's ticket: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let mut link = session.connect(line.parse::<Ticket>()?).await?;
    let result = link.send(&mut job, &mut Silent).await;
    if result.is_ok() {
        link.finish(job.report()).await;
    }
    // Tells the peer how it ended (our error, if any) and removes a router's port mapping.
    link.close(&result).await;
    result?;
    let r = job.report();
    println!("Sent {} files, {} bytes, all verified", r.files, r.total);
    Ok(())
}

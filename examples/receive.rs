//! Receives what a peer sends into a folder, as a program using the library would:
//! `cargo run --example receive -- [DIR]`, give the printed ticket to the peer (who runs
//! the `send_file` example or `p2pcopy sender`), then paste theirs here.

use p2pcopy::events::Event;
use p2pcopy::ticket::{Role, Ticket};
use p2pcopy::transfer::{check_output_dir, Incoming, Silent, Store};
use p2pcopy::{Session, SessionConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).unwrap_or_else(|| ".".into());
    check_output_dir(dir.as_ref())?;
    // Existing files are kept: a different one with the same name arrives as `name (1)`.
    let mut job = Incoming::new(Store::new(dir.into(), false));
    let events = |e: &Event| match e {
        Event::Connected { remote, .. } => eprintln!("connected to {remote}"),
        Event::FileDone { path, size, .. } => eprintln!("{path}: {size} bytes, verified"),
        _ => {}
    };
    let session = Session::bind(SessionConfig::new(Role::Receiver), events).await?;
    println!("Give your peer this ticket: {}", session.ticket());

    eprint!("Paste your peer's ticket: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let mut link = session.connect(line.parse::<Ticket>()?).await?;
    let result = link.receive(&mut job, &mut Silent).await;
    if result.is_ok() {
        // Waits for the sender to close, so it knows everything arrived.
        link.finish(job.report()).await;
    }
    link.close(&result).await;
    result?;
    for (path, hash) in job.saved_hashes() {
        println!("{hash}  {path}");
    }
    Ok(())
}

//! What a crash between the receiver's durability round and its final names leaves behind:
//! complete, verified part files, which the next run must name without their data crossing
//! the network again (`Store::persist_all`).

mod common;

use p2pcopy::error::CloseCode;
use p2pcopy::transfer::{part_name, Incoming, Outgoing, Silent, Store};

use common::{connected_pair, run_job};

#[tokio::test]
async fn complete_part_files_left_by_a_crash_are_named_without_sending_them_again() {
    let src = tempfile::tempdir().unwrap();
    let job = src.path().join("job");
    std::fs::create_dir(&job).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("f{i}.txt"),
                format!("small file {i}").repeat(i + 1).into_bytes(),
            )
        })
        .collect();
    for (name, data) in &files {
        std::fs::write(job.join(name), data).unwrap();
    }
    // As a crash leaves them: every file flushed under its part name, two already named.
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("job")).unwrap();
    for (i, (name, data)) in files.iter().enumerate() {
        let at = out
            .path()
            .join("job")
            .join(if i < 2 { name.clone() } else { part_name(name) });
        std::fs::write(&at, data).unwrap();
        // A named file counts as already there only with the sender's time.
        let mtime = std::fs::metadata(job.join(name))
            .unwrap()
            .modified()
            .unwrap();
        let f = std::fs::File::options().write(true).open(&at).unwrap();
        f.set_modified(mtime).unwrap();
    }

    let (_se, server_conn, _ce, client_conn) = connected_pair().await;
    let mut outgoing = Outgoing::new(p2pcopy::manifest::scan(&[job]).unwrap());
    let mut incoming = Incoming::new(Store::new(out.path().to_owned(), false));
    let (mut quiet_s, mut quiet_r) = (Silent, Silent);
    run_job(
        &client_conn,
        &server_conn,
        &mut outgoing,
        &mut incoming,
        &mut quiet_s,
        &mut quiet_r,
    )
    .await;
    client_conn.close(CloseCode::NO_ERROR.into(), b"");

    assert_eq!(outgoing.report().moved, 0, "data sent again");
    let report = incoming.report();
    assert_eq!(report.moved, 0, "data crossed again");
    assert_eq!(report.already_there, 2);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(report.total, total);
    let mut names: Vec<String> = std::fs::read_dir(out.path().join("job"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, want, "no part file left, no numbered copy");
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(out.path().join("job").join(name)).unwrap(),
            data
        );
    }
}

//! The journal, against the real `snp-shim` binary (issue 12):
//!
//! * SIGKILL at a random moment of a storm of direct registrations (immediate mode, ten
//!   rounds): every registration answered OK is in the store after a restart;
//! * two shims on one data directory: the second exits non-zero with an error naming the
//!   directory and the first one's pid, and the first loses nothing.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use snp_core::{Rng, SplitMix64};

type Acked = Arc<Mutex<Vec<(String, String, String)>>>;

/// Registrations from `workers` concurrent clients until the shim stops answering; every
/// `(namespace, interface, application)` answered OK is pushed to `acked`.
async fn storm(addr: std::net::SocketAddr, ns: String, workers: usize, acked: Acked) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let ns = ns.clone();
        let acked = Arc::clone(&acked);
        let ch = channel(addr).await;
        tasks.spawn(async move {
            let mut a = snp_proto::dubbo::service_name_mapping_service_client::ServiceNameMappingServiceClient::new(ch.clone());
            let mut b = snp_proto::admin::service_name_mapping_service_client::ServiceNameMappingServiceClient::new(ch);
            for n in 0u64.. {
                // New application names all the time, over a few interfaces: every call
                // is new to the journal, and the store has few objects to rewrite.
                let app = format!("app-w{w}-n{n}");
                let ifaces = [
                    format!("org.example.Service{}", n % 7),
                    format!("org.example.Other{}", (n + w as u64) % 5),
                ];
                let refs: Vec<&str> = ifaces.iter().map(String::as_str).collect();
                let ok = if n % 2 == 0 {
                    a.register_service_app_mapping(dubbo_req(&ns, &app, &refs))
                        .await
                        .is_ok()
                } else {
                    b.register_service_app_mapping(admin_req(&ns, &app, &refs))
                        .await
                        .is_ok_and(|r| r.get_ref().success)
                };
                if !ok {
                    return;
                }
                let mut acked = acked.lock().unwrap();
                for i in &ifaces {
                    acked.push((ns.clone(), i.clone(), app.clone()));
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn stored(data: &Path) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (k, apps) in on_disk(data).iter() {
        for a in apps.iter() {
            out.insert((k.namespace.clone(), k.interface.clone(), a.to_owned()));
        }
    }
    out
}

/// Waits until the shim has written everything it holds: nothing pending, and the
/// journal's live set empty.
async fn wait_idle(shim: &Binary) {
    let http = shim.http;
    let idle = eventually_async(Duration::from_secs(60), || async move {
        metric(http, "snp_pending_keys", &[]).await == 0.0
            && metric(http, "snp_journal_live_entries", &[]).await == 0.0
    })
    .await;
    assert!(idle, "the shim never went idle:\n{}", shim.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_a_storm_loses_no_acknowledged_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = SplitMix64::new(seed);
    let rounds = 10;
    let (mut total_acked, mut only_in_journal) = (0usize, 0usize);
    for round in 0..rounds {
        let log = tmp.path().join(format!("shim-{round}.log"));
        let mut shim = Binary::start(&data, &log, &["--log=info"]);
        shim.wait_ready(Duration::from_secs(30)).await;
        // What earlier rounds acknowledged was replayed and written.
        wait_idle(&shim).await;

        let acked: Acked = Arc::default();
        let ns = format!("round-{round}");
        let storm = tokio::spawn(storm(shim.grpc, ns, 16, Arc::clone(&acked)));
        // A random moment: early (the first batch not yet written) to late (several
        // batches written, the next debounce window open).
        let at = Duration::from_millis(150 + rng.next_u64() % 1500);
        tokio::time::sleep(at).await;
        shim.kill(); // SIGKILL
        storm.await.unwrap();

        let acked: BTreeSet<_> = acked.lock().unwrap().iter().cloned().collect();
        let at_kill = stored(&data);
        let missing_at_kill = acked.difference(&at_kill).count();
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");

        // Restart on the same directory: the journal is replayed and written.
        let log = tmp.path().join(format!("shim-{round}-restart.log"));
        let mut after = Binary::start(&data, &log, &["--log=info"]);
        after.wait_ready(Duration::from_secs(30)).await;
        wait_idle(&after).await;
        let now = stored(&data);
        let lost: Vec<_> = acked.difference(&now).collect();
        println!(
            "round {round}: killed after {at:?}; {} acknowledged, {missing_at_kill} of them only in the journal at the kill; {} lost",
            acked.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged registrations lost, e.g. {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(5)],
            after.log_text()
        );
        total_acked += acked.len();
        only_in_journal += missing_at_kill;
        assert!(after.terminate().await, "{}", after.log_text());
    }
    println!(
        "{rounds} rounds: {total_acked} acknowledged, {only_in_journal} only in the journal when killed, 0 lost"
    );
    // The kills did land while acknowledged registrations were not yet in the store:
    // without the journal these would have been lost.
    assert!(
        only_in_journal > 0,
        "no kill happened while acknowledged registrations were pending: the test proved nothing"
    );
}

/// Runs the binary expecting it to exit by itself; returns (success, stderr).
fn run_to_exit(args: &[String]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snp-shim"))
        .arg("--log-format=json")
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the second shim kept running:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shim_on_one_data_directory_exits_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut first = Binary::start(
        &data,
        &tmp.path().join("first.log"),
        &[
            "--debounce-after=60s",
            "--debounce-max=60s",
            "--debounce-first-check=60s",
        ],
    );
    first.wait_ready(Duration::from_secs(30)).await;
    let mut client = dubbo(first.grpc).await;
    client
        .register_service_app_mapping(dubbo_req("default", "before", &["org.example.A"]))
        .await
        .unwrap();

    let pid = first.pid();
    let base = |extra: &[&str]| {
        let mut v = vec![
            "--grpc-addr=127.0.0.1:0".to_owned(),
            "--http-addr=127.0.0.1:0".to_owned(),
            "--store=embedded".to_owned(),
            format!("--data-dir={}", data.display()),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // The journal's lock: the second exits at once, naming the directory and the holder.
    let (ok, err) = run_to_exit(&base(&[]));
    assert!(!ok, "the second shim must fail:\n{err}");
    let journal_dir = data.join("journal").join("default");
    assert!(
        err.contains(&journal_dir.display().to_string()),
        "names the directory:\n{err}"
    );
    assert!(
        err.contains(&format!("pid {pid}")),
        "names the holder:\n{err}"
    );
    assert!(err.contains("in use by another process"), "{err}");
    // Without a journal, the embedded store's own lock stops it.
    let (ok, err) = run_to_exit(&base(&["--journal=false"]));
    assert!(!ok, "the second shim must fail:\n{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    // The first shim goes on, and nothing it acknowledged is lost, even by a SIGKILL.
    client
        .register_service_app_mapping(dubbo_req("default", "after", &["org.example.B"]))
        .await
        .unwrap();
    assert!(on_disk(&data).is_empty(), "held by the 60 s windows");
    first.kill(); // SIGKILL
    let mut again = Binary::start(&data, &tmp.path().join("again.log"), &[]);
    again.wait_ready(Duration::from_secs(30)).await;
    wait_idle(&again).await;
    assert_eq!(
        on_disk(&data),
        mappings(&[
            ("default", "org.example.A", &["before"]),
            ("default", "org.example.B", &["after"]),
        ])
    );
    assert!(again.terminate().await, "{}", again.log_text());
}

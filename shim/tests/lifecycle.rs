//! The `snp-shim` binary: SIGTERM flushes what is pending, state survives restarts, the
//! CLI reads well.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use snp_proto::api::GetMappingsRequest;

/// The debounce windows of `sigterm_flushes_pending_registrations_then_exits_zero`.
const WINDOW: Duration = Duration::from_secs(60);

#[tokio::test]
async fn sigterm_flushes_pending_registrations_then_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Windows far longer than the test: only the shutdown flush can write these.
    let mut shim = Binary::start(
        &data,
        &tmp.path().join("shim.log"),
        &[
            "--debounce-first-check=60s",
            "--debounce-after=60s",
            "--debounce-max=60s",
            "--log=debug,h2=info,hyper=info,tower=info",
        ],
    );
    let mut a = dubbo(shim.grpc).await;
    let mut b = admin(shim.grpc).await;
    for i in 0..50 {
        a.register_service_app_mapping(dubbo_req(
            "default",
            &format!("app-{}", i % 3),
            &["com.Flush.A", "com.Flush.B"],
        ))
        .await
        .unwrap();
        b.register_service_app_mapping(admin_req(
            "team-b",
            "app-b",
            &[&format!("com.Flush.C{}", i % 5)],
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        on_disk(&data).is_empty(),
        "nothing may be written before the window"
    );
    assert_eq!(metric(shim.http, "snp_pending_keys", &[]).await, 7.0);

    let t0 = Instant::now();
    assert!(shim.terminate().await, "exit status:\n{}", shim.log_text());
    let took = t0.elapsed();
    let expected = mappings(&[
        ("default", "com.Flush.A", &["app-0", "app-1", "app-2"]),
        ("default", "com.Flush.B", &["app-0", "app-1", "app-2"]),
        ("team-b", "com.Flush.C0", &["app-b"]),
        ("team-b", "com.Flush.C1", &["app-b"]),
        ("team-b", "com.Flush.C2", &["app-b"]),
        ("team-b", "com.Flush.C3", &["app-b"]),
        ("team-b", "com.Flush.C4", &["app-b"]),
    ]);
    assert_eq!(on_disk(&data), expected);
    // Only the shutdown flush can have written them, and it did not wait for the 60 s
    // windows: a small fraction of one (a ratio, not a wall-clock bound on a loaded machine).
    assert!(
        took < WINDOW / 4,
        "shutdown took {took:?}, against {WINDOW:?} windows"
    );
    let log = shim.log_text();
    assert!(log.contains("flushing pending mappings"), "{log}");
    assert!(
        log.contains("every pending mapping is in the store"),
        "{log}"
    );
    // Logs are structured: one JSON object per line.
    for line in log.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[tokio::test]
async fn state_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut first = Binary::start(
        &data,
        &tmp.path().join("first.log"),
        &["--ack-mode=durable"],
    );
    dubbo(first.grpc)
        .await
        .register_service_app_mapping(dubbo_req(
            "default",
            "before",
            &["com.Persist", "com.Other$Inner"],
        ))
        .await
        .unwrap();
    assert!(first.terminate().await);

    let mut second = Binary::start(
        &data,
        &tmp.path().join("second.log"),
        &["--ack-mode=durable"],
    );
    let mut api = api(second.grpc).await;
    let got = lookup(&mut api, "default", &[]).await;
    let names: Vec<(String, Vec<String>)> = got
        .iter()
        .map(|m| (m.interface_name.clone(), m.application_names.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("com.Other$Inner".to_owned(), vec!["before".to_owned()]),
            ("com.Persist".to_owned(), vec!["before".to_owned()]),
        ]
    );
    // The union continues from what was on disk; the revision moves on.
    let rev_before = got[1].revision.clone();
    admin(second.grpc)
        .await
        .register_service_app_mapping(admin_req("default", "after", &["com.Persist"]))
        .await
        .unwrap();
    let got = api
        .get_mappings(GetMappingsRequest {
            namespace: "default".into(),
            interface_names: vec!["com.Persist".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.mappings[0].application_names, vec!["after", "before"]);
    assert_ne!(got.mappings[0].revision, rev_before);
    // A restart costs no write for what is already stored.
    assert_eq!(
        metric(second.http, "snp_store_writes_total", &[r#"verb="create""#]).await,
        0.0
    );
    assert!(second.terminate().await);
    assert_eq!(
        on_disk(&data),
        mappings(&[
            ("default", "com.Persist", &["after", "before"]),
            ("default", "com.Other$Inner", &["before"])
        ])
    );
}

#[test]
fn help_and_crd_subcommand() {
    let exe = env!("CARGO_BIN_EXE_snp-shim");
    let help = Command::new(exe).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--grpc-addr",
        "--data-dir",
        "--debounce-after",
        "--ack-mode",
        "--auth-token-file",
        "[env: SNP_GRPC_ADDR=]",
        "[default: 100ms]",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let crd = Command::new(exe)
        .args(["crd", "--crd-group", "dubbo.apache.org"])
        .output()
        .unwrap();
    assert!(crd.status.success());
    let yaml = String::from_utf8(crd.stdout).unwrap();
    assert!(
        yaml.contains("name: servicenamemappings.dubbo.apache.org"),
        "{yaml}"
    );
    let bad = Command::new(exe)
        .args(["--debounce-after", "soon"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--debounce-after"));
}

/// Runs the binary to its end on an embedded store in `dir`, on free ports, with `flags`.
fn run_to_exit(dir: &std::path::Path, flags: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snp-shim"))
        .args([
            "--grpc-addr=127.0.0.1:0",
            "--http-addr=127.0.0.1:0",
            "--store=embedded",
            "--log-format=text",
        ])
        .arg(format!("--data-dir={}", dir.display()))
        .args(flags)
        .output()
        .unwrap()
}

#[test]
fn a_bad_token_file_is_a_clear_startup_error() {
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("--auth-token-file={}", tmp.path().join("missing").display());
    let out = run_to_exit(tmp.path(), &[token]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reading the token file"), "{err}");
}

#[test]
fn nonsense_flag_values_are_usage_errors_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            &["--retry-base=0s"][..],
            "invalid value for --retry-base: must be greater than 0s",
        ),
        (
            &["--debounce-after=500ms", "--debounce-max=100ms"][..],
            "invalid value for --debounce-max: 100ms is below --debounce-after (500ms)",
        ),
        (
            &["--ack-timeout=0s"][..],
            "invalid value for --ack-timeout: must be greater than 0s",
        ),
    ] {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let out = run_to_exit(tmp.path(), &flags);
        let err = String::from_utf8_lossy(&out.stderr);
        // A usage error, as clap's own: exit code 2, before anything starts.
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!err.contains("listening"), "{flags:?}: {err}");
    }
}

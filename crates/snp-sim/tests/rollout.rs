//! The simulator's model, checked on small rollouts whose outcome follows from the
//! Debouncer's rules (first check 200 ms, quiet 100 ms, max 1 s), and its determinism.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use snp_sim::{simulate, simulate_json, Outage, Pattern, Proxy, Rollout, StartSpread};

fn proxyless(replicas: u32, interfaces: u32, nodes: u32) -> Rollout {
    Rollout {
        replicas,
        interfaces,
        nodes,
        proxy: Proxy::None,
        call_gap_ms: 0,
        start: StartSpread {
            pattern: Pattern::Even,
            over_ms: 0,
            ..StartSpread::default()
        },
        ..Rollout::default()
    }
}

#[test]
fn one_burst_is_one_batch_at_the_first_check() {
    let r = simulate(&proxyless(50, 10, 1)).unwrap();
    assert_eq!(r.calls, 500);
    assert_eq!(r.batches.len(), 1, "{:?}", r.batches);
    let b = &r.batches[0];
    // Everything arrives at 0: the burst is quiet at 100 ms, the first check is at 200 ms.
    assert_eq!((b.start_ms, b.keys, b.created), (200, 10, 10));
    // Ten creates at 5 ms each.
    assert_eq!(b.end_ms, 250);
    assert_eq!(r.all_stored_ms, Some(250));
    assert_eq!((r.writes, r.conflicts), (10, 0));
}

#[test]
fn a_storm_longer_than_debounce_max_is_cut_at_one_second() {
    // One call every 10 ms for 3 s: never quiet for 100 ms, so the burst goes at 1 s.
    let rollout = Rollout {
        call_gap_ms: 0,
        start: StartSpread {
            pattern: Pattern::Even,
            over_ms: 2990,
            ..StartSpread::default()
        },
        ..proxyless(300, 1, 1)
    };
    let r = simulate(&rollout).unwrap();
    let starts: Vec<u64> = r.batches.iter().map(|b| b.start_ms).collect();
    // Only the first batch writes; repeats of the acknowledged mapping are absorbed.
    assert_eq!(starts, vec![1000], "{:?}", r.batches);
    assert_eq!(r.created, 1);
    // Without the absorption, the seed's windows cut the storm every second.
    let mut plain = rollout.clone();
    plain.shim.suppress_acked_ms = 0;
    let r = simulate(&plain).unwrap();
    let starts: Vec<u64> = r.batches.iter().map(|b| b.start_ms).collect();
    // Calls while a batch is in flight ride on it; the next burst starts 10 ms later.
    assert_eq!(starts, [1000, 2010, 3020], "{:?}", r.batches);
    assert!(r
        .batches
        .iter()
        .skip(1)
        .all(|b| b.unchanged == 1 && b.created == 0));
}

#[test]
fn nodes_meet_each_other_with_conflicts_and_converge() {
    let r = simulate(&proxyless(30, 5, 3)).unwrap();
    assert_eq!(r.batches.len(), 3);
    // All three nodes flush at 200 ms; the first to finish creates, the others 409.
    assert_eq!(r.created, 5);
    assert_eq!(r.conflicts, 10);
    assert_eq!(r.writes, 15);
    assert_eq!(r.all_stored_ms, Some(225));
}

#[test]
fn an_outage_fails_batches_that_are_retried_with_backoff_until_stored() {
    let rollout = Rollout {
        outage: Some(Outage {
            start_ms: 0,
            end_ms: 5000,
        }),
        ..proxyless(10, 4, 1)
    };
    let r = simulate(&rollout).unwrap();
    assert!(r.failed_batches >= 3, "{:?}", r.batches);
    let stored = r.all_stored_ms.unwrap();
    assert!(stored >= 5000, "{stored}");
    // Every failed batch is followed by one later: 1 s, 2 s, 4 s ... (minus jitter).
    let starts: Vec<u64> = r.batches.iter().map(|b| b.start_ms).collect();
    for w in starts.windows(2) {
        assert!(w[1] > w[0] + 700, "{starts:?}");
    }
    assert_eq!(r.created, 4);
}

#[test]
fn filters_forward_to_the_shim_and_are_answered_once_stored() {
    let rollout = Rollout {
        proxy: Proxy::Node,
        workers: 4,
        ..proxyless(40, 8, 2)
    };
    let r = simulate(&rollout).unwrap();
    // 2 nodes x 4 workers, each with replicas on it: one filter batch each.
    assert_eq!(r.filter_batches.len(), 8);
    assert!(r.filter_batches.iter().all(|b| b.ok && b.start_ms == 200));
    // Filter batches reach the shims at 201 ms: one shim batch per node at 401 ms.
    assert_eq!(r.batches.len(), 2, "{:?}", r.batches);
    assert!(r.batches.iter().all(|b| b.start_ms == 401));
    let answered = r.filter_batches.iter().map(|b| b.end_ms).max().unwrap();
    assert!(answered > r.all_stored_ms.unwrap());
}

#[test]
fn the_default_rollout_is_deterministic_and_json_round_trips() {
    let a = simulate_json("").unwrap();
    let b = simulate_json(&serde_json::to_string(&Rollout::default()).unwrap()).unwrap();
    assert_eq!(a, b);
    let report: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(report["calls"], 4000);
    assert_eq!(report["created"], 20);
    assert!(report["all_stored_ms"].as_u64().is_some());
    assert!(simulate_json(r#"{"replicas": 0}"#)
        .unwrap_err()
        .contains("replicas"));
    assert!(simulate_json(r#"{"replica": 3}"#)
        .unwrap_err()
        .contains("unknown field"));
}

#[test]
fn the_cli_prints_what_the_library_returns() {
    let input = r#"{"replicas": 30, "nodes": 3, "proxy": "sidecar"}"#;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snp-sim"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        simulate_json(input).unwrap()
    );
}

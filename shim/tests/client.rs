//! The subscription client (`snp-client`) against an in-process shim. The calls and the
//! watch are real; the clock is tokio's paused clock, so the schedule's delays, the
//! backoff gaps and every "within" below are exact virtual time, not wall-clock time on a
//! loaded machine (the runtime only moves the clock when every task waits on a timer).
//! The schedule's arithmetic itself is unit-tested in snp-core.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use snp_client::{ClientConfig, MappingClient};
use snp_core::{AppSet, Backoff, MappingKey, ScheduleConfig};
use snp_proto::api::PushMappingsRequest;
use tokio::time::Instant;

type Heard = Arc<Mutex<Vec<(Instant, AppSet)>>>;

fn recorder() -> (Heard, impl Fn(&MappingKey, &AppSet) + Send + Sync + 'static) {
    let heard: Heard = Arc::default();
    let h = Arc::clone(&heard);
    (heard, move |_k: &MappingKey, apps: &AppSet| {
        h.lock().unwrap().push((Instant::now(), apps.clone()))
    })
}

fn apps(names: &[&str]) -> AppSet {
    names.iter().collect()
}

fn heard_apps(h: &Heard) -> Vec<AppSet> {
    h.lock().unwrap().iter().map(|(_, a)| a.clone()).collect()
}

async fn push(addr: std::net::SocketAddr, ns: &str, iface: &str, names: &[&str]) {
    api(addr)
        .await
        .push_mappings(PushMappingsRequest {
            batch_id: format!("{iface}/{names:?}"),
            source: "test".into(),
            mappings: vec![mapping(ns, iface, names)],
            want_results: false,
        })
        .await
        .unwrap();
}

/// A port nothing listens on (for now).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fast() -> &'static [&'static str] {
    &["--debounce-first-check=20ms", "--debounce-after=10ms"]
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_changes_only_and_the_watch_delivers_them() {
    let tmp = tempfile::tempdir().unwrap();
    let shim = start(tmp.path(), fast()).await;
    // Nacos's own schedule: first refresh after 1 s, then every 6 s.
    let client = MappingClient::connect(endpoint(shim.grpc_addr), ClientConfig::default()).unwrap();
    let key = MappingKey::new("default", "com.Sub");
    let (heard, listener) = recorder();
    client.subscribe(key.clone(), listener).await.unwrap();
    assert!(eventually(Duration::from_secs(3), || client.stats().watch_opened == 1).await);

    push(shim.grpc_addr, "default", "com.Sub", &["a"]).await;
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || heard.lock().unwrap().len() == 1).await,
        "no change within 1 s"
    );
    eprintln!(
        "watch: change heard {:?} after the push was acknowledged",
        t.elapsed()
    );
    assert_eq!(heard_apps(&heard), vec![apps(&["a"])]);

    // Repeats and other keys are not changes.
    push(shim.grpc_addr, "default", "com.Sub", &["a"]).await;
    push(shim.grpc_addr, "default", "com.Other", &["x"]).await;
    push(shim.grpc_addr, "default", "com.Sub", &["b"]).await;
    assert!(eventually(Duration::from_secs(1), || heard.lock().unwrap().len() == 2).await);
    assert_eq!(heard_apps(&heard), vec![apps(&["a"]), apps(&["a", "b"])]);

    // Past the first scheduled refresh (1 s after subscribing): the watch made every call
    // unnecessary (each pushed change postpones the refresh by an interval, and a due
    // refresh is answered from the stream's view), and nothing was heard twice.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(heard.lock().unwrap().len(), 2);
    assert_eq!(client.stats().fetches, 0, "{:?}", client.stats());
    assert_eq!(client.cached(&key).await.unwrap(), Some(apps(&["a", "b"])));

    // A late subscriber hears the cached content at once.
    let (late, late_listener) = recorder();
    let id = client.subscribe(key.clone(), late_listener).await.unwrap();
    assert!(
        eventually(Duration::from_millis(500), || late.lock().unwrap().len()
            == 1)
        .await
    );
    assert_eq!(heard_apps(&late), vec![apps(&["a", "b"])]);
    assert!(client.unsubscribe(&key, id).await.unwrap());
    assert!(!client.unsubscribe(&key, id).await.unwrap());
    // The unsubscribed listener hears nothing more; the other one does.
    push(shim.grpc_addr, "default", "com.Sub", &["c"]).await;
    assert!(eventually(Duration::from_secs(1), || heard.lock().unwrap().len() == 3).await);
    assert_eq!(late.lock().unwrap().len(), 1);
    shim.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refreshes_back_off_while_the_shim_is_down_and_reset_when_it_is_back() {
    let port = unused_port();
    // Nacos's schedule scaled down 50x: first refresh after 50 ms, then every 120 ms; a
    // failure doubles it: 240, 480, 960, 1920 ms.
    let cfg = ClientConfig {
        schedule: ScheduleConfig {
            first_delay: Duration::from_millis(50),
            cache_millis: Duration::from_millis(20),
            ..ScheduleConfig::default()
        },
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(200),
        watch: false,
        ..ClientConfig::default()
    };
    let client = MappingClient::connect(format!("http://127.0.0.1:{port}"), cfg).unwrap();
    let key = MappingKey::new("default", "com.Down");
    let (heard, listener) = recorder();
    let t0 = Instant::now();
    client.subscribe(key.clone(), listener).await.unwrap();

    // Record when each call is made.
    let mut attempts: Vec<Duration> = Vec::new();
    let mut seen = 0;
    while attempts.len() < 5 && t0.elapsed() < Duration::from_secs(8) {
        let n = client.stats().fetches;
        if n > seen {
            seen = n;
            attempts.push(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(attempts.len(), 5, "attempts: {attempts:?}");
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    eprintln!("shim down: calls at {attempts:?}, gaps {gaps:?} ms");
    // Virtual time: the only slack is the 5 ms polling above.
    assert!(attempts[0] >= Duration::from_millis(50) && attempts[0] <= Duration::from_millis(60));
    for (gap, want) in gaps.iter().zip([240u128, 480, 960, 1920]) {
        assert!(
            gap.abs_diff(want) <= 10,
            "gap {gap} ms, want {want} ms ({gaps:?})"
        );
    }
    assert_eq!(client.stats().fetch_failures, client.stats().fetches);
    assert!(heard.lock().unwrap().is_empty());

    // The shim comes back with content: the next scheduled call succeeds, the listener hears
    // it once, and the schedule returns to the normal interval.
    let tmp = tempfile::tempdir().unwrap();
    let shim = start_at(tmp.path(), &format!("127.0.0.1:{port}"), fast()).await;
    push(shim.grpc_addr, "default", "com.Down", &["back"]).await;
    assert!(eventually(Duration::from_secs(5), || heard.lock().unwrap().len() == 1).await);
    assert_eq!(heard_apps(&heard), vec![apps(&["back"])]);
    let after = client.stats().fetches;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let more = client.stats().fetches - after;
    assert!(
        (4..=7).contains(&more),
        "{more} calls in 700 ms at a 120 ms interval"
    );
    assert_eq!(
        heard.lock().unwrap().len(),
        1,
        "unchanged content must not notify"
    );
    shim.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_broken_watch_falls_back_to_refreshes_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let port = unused_port();
    let addr = format!("127.0.0.1:{port}");
    let shim = start_at(tmp.path(), &addr, fast()).await;
    let cfg = ClientConfig {
        schedule: ScheduleConfig {
            first_delay: Duration::from_millis(100),
            cache_millis: Duration::from_millis(50),
            ..ScheduleConfig::default()
        },
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(200),
        watch: true,
        // Re-open a broken watch only after 3 s, so the fallback has to carry the gap.
        watch_backoff: Backoff::new(Duration::from_secs(3), Duration::from_secs(3), 1),
    };
    let client = MappingClient::connect(format!("http://{addr}"), cfg).unwrap();
    let key = MappingKey::new("default", "com.Flaky");
    let (heard, listener) = recorder();
    client.subscribe(key.clone(), listener).await.unwrap();
    assert!(eventually(Duration::from_secs(3), || client.stats().watch_opened == 1).await);
    push(shim.grpc_addr, "default", "com.Flaky", &["a"]).await;
    assert!(eventually(Duration::from_secs(1), || heard.lock().unwrap().len() == 1).await);

    // While the watch is live, refreshes (every 300 ms) make no calls.
    let before = client.stats();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = client.stats();
    assert_eq!(during.fetches, before.fetches, "{during:?}");
    assert!(
        during.watch_refreshes >= before.watch_refreshes + 2,
        "{during:?}"
    );

    // The shim restarts: the stream breaks, refreshes go back to GetMappings.
    shim.stop().await.unwrap();
    assert!(eventually(Duration::from_secs(2), || client.stats().watch_broken >= 1).await);
    let shim = start_at(tmp.path(), &addr, fast()).await;
    push(shim.grpc_addr, "default", "com.Flaky", &["b"]).await;
    assert!(
        eventually(Duration::from_secs(2), || heard.lock().unwrap().len() == 2).await,
        "the change never arrived through the fallback: {:?}",
        client.stats()
    );
    let fallback = client.stats();
    assert_eq!(
        fallback.watch_opened, 1,
        "heard through a re-opened watch, not the fallback"
    );
    assert!(fallback.fetches > during.fetches);
    assert_eq!(heard_apps(&heard), vec![apps(&["a"]), apps(&["a", "b"])]);

    // After its backoff, the watch is re-opened and carries changes again.
    assert!(eventually(Duration::from_secs(5), || client.stats().watch_opened == 2).await);
    let reopened = client.stats();
    push(shim.grpc_addr, "default", "com.Flaky", &["c"]).await;
    assert!(eventually(Duration::from_secs(1), || heard.lock().unwrap().len() == 3).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        client.stats().fetches,
        reopened.fetches,
        "calls resumed although the watch is live"
    );
    shim.stop().await.unwrap();
}

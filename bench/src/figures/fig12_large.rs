//! Figure 12: one shim, large: 100,000 keys, then 1,000,000 registrations over them; the
//! time to write keys through the real API server; a `WatchMappings` snapshot of 10,000
//! keys.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prost::Message;
use snp_proto::api::mapping_service_client::MappingServiceClient;
use snp_proto::api::WatchMappingsRequest;

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, LoadReport};
use crate::procs::Memory;
use crate::stats::{fmt_dur, fmt_int, fmt_rate};
use crate::table::Table;
use crate::workload::Rollout;

/// gRPC's default largest message a client decodes (tonic, grpc-java, grpc-go).
const DEFAULT_DECODE_LIMIT: usize = 4 * 1024 * 1024;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Opens `WatchMappings` on `namespace` and times its first message (the snapshot).
async fn snapshot(addr: &str, namespace: &str) -> Result<(Duration, usize, usize)> {
    let ch = crate::rawgrpc::connect(addr).await?;
    // A client with gRPC's default 4 MiB decode limit, as users' clients have.
    let mut client = MappingServiceClient::new(ch).max_decoding_message_size(DEFAULT_DECODE_LIMIT);
    let t = Instant::now();
    let mut stream = client
        .watch_mappings(WatchMappingsRequest {
            namespace: namespace.to_owned(),
            interface_names: vec![],
        })
        .await
        .context("WatchMappings")?
        .into_inner();
    let first = stream
        .message()
        .await
        .context("WatchMappings snapshot")?
        .context("WatchMappings ended before its snapshot")?;
    let took = t.elapsed();
    Ok((took, first.mappings.len(), first.encoded_len()))
}

/// Figure 12.
pub async fn fig12(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 12: one shim, large");
    let (namespaces, ifaces, pods) = if env.quick {
        (10, 1_000, 10)
    } else {
        (10, 10_000, 10)
    };
    let keys = namespaces * ifaces;
    println!(
        "One `snp-shim --store embedded` (default flags) on a fresh data directory. Phase 1: {} keys ({namespaces} namespaces x {} interfaces, one registration each, one application per namespace). Phase 2: {} registrations over the same keys ({pods} pods per namespace, each registering every interface of its namespace), 64 calls in flight over 4 connections. RSS is the shim's `VmRSS` sampled every 100 ms and its `VmHWM` (peak).\n",
        fmt_int(keys as u64),
        fmt_int(ifaces as u64),
        fmt_int((keys * pods) as u64),
    );
    let shim = Shim::start(env, "fig12-shim", None, &[]).await?;
    let pid = shim.proc.pid();
    let start_mem = crate::procs::memory(pid)?;
    let prefix = crate::workload::unique_prefix("fig12");
    let phase = |pods: usize| Rollout {
        pods,
        interfaces: ifaces,
        namespaces,
        apps: 1,
        prefix: prefix.clone(),
        jitter: Duration::from_secs(1),
        seed: 1,
    };
    let cfg1 = storm(&shim, phase(1), None, Duration::from_secs(900));
    let (r1, peak1) = sampled(pid, Duration::from_millis(100), load::run(&cfg1)).await;
    let r1: LoadReport = r1?;
    check_complete("figure 12: phase 1", &r1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest1 = crate::procs::memory(pid)?;
    let mut cfg2 = storm(&shim, phase(pods), None, Duration::from_secs(900));
    // Same keys, same application: nothing new to converge on; no watch needed.
    cfg2.converge_shims.clear();
    let (r2, peak2) = sampled(pid, Duration::from_millis(100), load::run(&cfg2)).await;
    let r2: LoadReport = r2?;
    check_complete("figure 12: phase 2", &r2)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest2 = crate::procs::memory(pid)?;
    let ns0 = phase(1).namespace(0);
    let (snap_t, snap_n, snap_bytes) = snapshot(&shim.grpc, &ns0).await?;
    let (snap_t2, _, _) = snapshot(&shim.grpc, &ns0).await?;
    drop(shim);

    let mut t = Table::new(&[
        "phase",
        "registrations",
        "sent in",
        "throughput",
        "converged",
        "RSS after",
        "RSS peak (sampled)",
        "VmHWM",
    ]);
    let row = |t: &mut Table, what: &str, r: &LoadReport, after: &Memory, peak: u64| {
        t.row([
            what.to_owned(),
            fmt_int(r.ok),
            fmt_dur(r.elapsed),
            fmt_rate(r.throughput()),
            r.converged.map_or("-".into(), fmt_dur),
            mib(after.rss),
            mib(peak),
            mib(after.hwm),
        ]);
    };
    t.row([
        "started, empty".to_owned(),
        "0".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        mib(start_mem.rss),
        "-".into(),
        mib(start_mem.hwm),
    ]);
    row(
        &mut t,
        &format!("1: {} new keys", fmt_int(keys as u64)),
        &r1,
        &rest1,
        peak1,
    );
    row(
        &mut t,
        &format!("2: {} registrations over them", fmt_int(r2.ok)),
        &r2,
        &rest2,
        peak2,
    );
    print_table("", &t);
    let per_key = snap_bytes as f64 / snap_n.max(1) as f64;
    let fits = (DEFAULT_DECODE_LIMIT as f64 / per_key) as u64;
    println!(
        "`WatchMappings` on one namespace of {} keys: snapshot in {} (again: {}), one message of {} ({per_key:.0} bytes a key); gRPC's default 4 MiB decode limit holds about {} keys of these names.\n",
        fmt_int(snap_n as u64),
        fmt_dur(snap_t),
        fmt_dur(snap_t2),
        mib(snap_bytes as u64),
        fmt_int(fits),
    );
    if snap_n != ifaces {
        bail!("figure 12: the snapshot held {snap_n} keys, not {ifaces}");
    }

    // Writing every key through the real API server at the default client-side limit.
    let kube_keys = if env.quick { 200 } else { 2_000 };
    println!(
        "Writing keys through the real API server (`scripts/k8s-apiserver.sh`, `snp-shim --store kubernetes`): {} new keys in one namespace, one registration each, at the default --kube-qps 20 --kube-burst 40, and the same with the client-side limit off (--kube-qps 0) to see what the server itself allows. 100,000 keys at the default limit would take over 80 minutes here, so {} are measured and 100,000 extrapolated: 40 at once (the burst), then 20 per second.\n",
        fmt_int(kube_keys as u64),
        fmt_int(kube_keys as u64),
    );
    let api = ApiServer::start(env, "fig12-apiserver").await?;
    let mut kt = Table::new(&[
        "client-side limit",
        "keys",
        "time to every key stored",
        "keys / s",
        "API writes",
        "shim RSS after",
    ]);
    let mut rates = Vec::new();
    for (label, extra) in [
        ("--kube-qps 20 --kube-burst 40 (default)", None),
        ("off (--kube-qps 0)", Some("--kube-qps=0")),
    ] {
        let args: Vec<&str> = extra.into_iter().collect();
        let kshim = Shim::start(
            env,
            &format!("fig12-kshim-{}", rates.len()),
            Some(&api.shim_kubeconfig),
            &args,
        )
        .await?;
        let r = Rollout {
            pods: 1,
            interfaces: kube_keys,
            namespaces: 1,
            apps: 1,
            prefix: crate::workload::unique_prefix("fig12k"),
            jitter: Duration::ZERO,
            seed: 1,
        };
        let rep = load::run(&storm(
            &kshim,
            r,
            Some(api.target()),
            Duration::from_secs(900),
        ))
        .await?;
        check_complete("figure 12: API server run", &rep)?;
        let mem = crate::procs::memory(kshim.proc.pid())?;
        let took = rep.converged.unwrap_or(rep.elapsed);
        let rate = kube_keys as f64 / took.as_secs_f64().max(1e-9);
        kt.row([
            label.to_owned(),
            fmt_int(kube_keys as u64),
            fmt_dur(took),
            format!("{rate:.1}"),
            fmt_int(rep.api.as_ref().map_or(0, |a| a.writes())),
            mib(mem.rss),
        ]);
        rates.push((took, rate));
    }
    drop(api);
    print_table("", &kt);
    let limited = rates[0].0;
    let unlimited = rates[1].0;
    let extrapolated = Duration::from_secs_f64((100_000.0 - 40.0) / 20.0);
    let limit_share = 1.0 - unlimited.as_secs_f64() / limited.as_secs_f64().max(1e-9);
    println!(
        "100,000 keys at the default limit: about {} (40 in the burst, then 99,960 at 20/s); {:.0} % of the measured time is the client-side limit (the same keys unthrottled took {}).\n",
        fmt_dur(extrapolated),
        limit_share * 100.0,
        fmt_dur(unlimited),
    );

    let mut v = vec![
        Verdict::info(
            format!(
                "12. shim RSS: empty / {} keys at rest / peak through {} registrations",
                fmt_int(keys as u64),
                fmt_int(r2.ok)
            ),
            format!(
                "{} / {} / {}",
                mib(start_mem.rss),
                mib(rest1.rss),
                mib(rest2.hwm)
            ),
        ),
        Verdict::check(
            format!(
                "12. WatchMappings snapshot of {} keys: one message",
                fmt_int(snap_n as u64)
            ),
            "fits gRPC's default 4 MiB decode limit",
            format!("{} in {}", mib(snap_bytes as u64), fmt_dur(snap_t)),
            snap_bytes < DEFAULT_DECODE_LIMIT,
        ),
        Verdict::info(
            "12. 100,000 keys through the API server at --kube-qps 20 (extrapolated)",
            format!(
                "{} ({:.1} keys/s measured over {} keys; limit off: {:.1} keys/s)",
                fmt_dur(extrapolated),
                rates[0].1,
                fmt_int(kube_keys as u64),
                rates[1].1
            ),
        ),
    ];
    let rate_ok = rates[0].1 >= 18.0;
    v.push(Verdict::check(
        "12. keys / s at --kube-qps 20",
        "the client-side limit dominates (>= 18/s, i.e. >= 0.9 of the limit)",
        format!("{:.1}", rates[0].1),
        rate_ok,
    ));
    Ok(v)
}

//! Figure 11: a cluster, simulated: the store's merge engine on a virtual clock against a
//! model of the API server, from 10 to 1,000 nodes, and checked against the real API
//! server at 4 and 8 shims.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use snp_store::kube::sim::{self, Cluster, ClusterReport};

use super::runs::*;
use super::setup::*;
use super::{print_table, section, Env, Verdict};
use crate::load::{self, LoadConfig, Rpc, TargetKind};
use crate::stats::{fmt_dur, fmt_int};
use crate::table::Table;

/// Runs the model off the async runtime.
async fn model(c: Cluster) -> Result<(ClusterReport, Duration)> {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = sim::simulate(&c);
        r.map(|r| (r, t.elapsed()))
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("empty cluster"))
}

fn ms(v: Option<u64>) -> String {
    v.map_or("never".into(), |ms| fmt_dur(Duration::from_millis(ms)))
}

/// The columns of the model's tables.
fn model_table() -> Table {
    Table::new(&[
        "nodes",
        "create / update spread",
        "registrations",
        "shim batches",
        "API writes (POST + PUT)",
        "writes / key",
        "409 Conflict",
        "409 AlreadyExists",
        "GETs",
        "no-op skips",
        "keys given up (retried)",
        "every mapping stored at",
        "last registration at",
        "simulated in",
    ])
}

/// Figure 11.
pub async fn fig11(env: &Env) -> Result<Vec<Verdict>> {
    section("Figure 11: a cluster, simulated (the store's merge engine on a virtual clock)");
    let base = Cluster::default();
    let pods = if env.quick { 5_000 } else { base.pods };
    println!(
        "Every node runs the shim's engine with the I/O replaced (`snp_store::kube::sim`): the core's Debouncer with the shim's settings, the Kubernetes store's cache, write plan and union body (`Cache::plan`, `union_body`, the index), its merge loop (union update with resourceVersion; on 409 a GET and a jittered pause; the create spread and the update spread, each then a second look) and its client-side token bucket (--kube-qps {} --kube-burst {}). The API server model keeps a resourceVersion per object, answers 409 Conflict to a stale update and 409 AlreadyExists to a racing create, serves at most {} requests/s (queued beyond), takes {} ms per request, and delivers each write to every node's watch after {}-{} ms. Rollout: {} pods of {} applications ({} interfaces each, consecutive, so each of the {} interfaces has 2 applications) start uniformly within {:?} onto an empty store, one namespace; a pod registers straight into its node's shim. Times are virtual.\n",
        base.qps,
        base.burst,
        base.server_qps,
        base.request_ms,
        base.watch_ms,
        2 * base.watch_ms,
        fmt_int(u64::from(pods)),
        fmt_int(u64::from(base.apps)),
        base.interfaces_per_app,
        fmt_int(u64::from(base.interfaces)),
        Duration::from_millis(base.over_ms),
    );
    let mut t = model_table();
    let row = |t: &mut Table, c: &Cluster, r: &ClusterReport, wall: Duration| {
        t.row([
            fmt_int(u64::from(c.nodes)),
            if c.create_spread == c.update_spread {
                format!("{:?}", c.create_spread)
            } else {
                format!("{:?} / {:?}", c.create_spread, c.update_spread)
            },
            fmt_int(r.calls),
            fmt_int(r.batches),
            fmt_int(r.writes()),
            format!("{:.2}", r.writes() as f64 / f64::from(c.interfaces)),
            fmt_int(r.conflicts),
            fmt_int(r.already_exists),
            fmt_int(r.gets),
            fmt_int(r.noop_skips),
            fmt_int(r.contended),
            ms(r.all_stored_ms),
            ms(Some(r.last_call_ms)),
            fmt_dur(wall),
        ]);
    };
    let mut by_nodes = Vec::new();
    for nodes in [10u32, 100, 1_000] {
        let c = Cluster {
            nodes,
            pods,
            ..base.clone()
        };
        let (r, wall) = model(c.clone()).await?;
        row(&mut t, &c, &r, wall);
        by_nodes.push((c, r));
    }
    print_table(
        "As nodes grow (default --kube-create-spread and --kube-update-spread 500ms):",
        &t,
    );
    let mut s = model_table();
    let mut by_spread = Vec::new();
    for spread in [0u64, 500, 2_000] {
        let c = Cluster {
            pods,
            create_spread: Duration::from_millis(spread),
            update_spread: Duration::from_millis(spread),
            ..base.clone()
        };
        let (r, wall) = model(c.clone()).await?;
        row(&mut s, &c, &r, wall);
        by_spread.push((c, r));
    }
    print_table(
        &format!(
            "--kube-create-spread and --kube-update-spread (both) at {} nodes:",
            fmt_int(u64::from(base.nodes))
        ),
        &s,
    );

    // The model against the real API server, on the rollout of figure 3.
    let (rpods, rifaces) = if env.quick { (50, 4) } else { (200, 10) };
    let jitter = Duration::from_secs(3);
    println!(
        "Model against the real API server (`scripts/k8s-apiserver.sh`), the rollout of figure 3: {rpods} pods x {rifaces} interfaces of one application, one namespace, pods starting within {jitter:?}, spread round-robin over the shims (`snp-shim --store kubernetes`, default flags but the create and update spreads). The real side counts the API server's own `apiserver_request_total`; the model is the mean of 5 seeds with {} ms per request and a {}-{} ms watch, like a local API server. Convergence: from the first registration until every mapping is stored (real: seen through every shim's `WatchMappings`).\n",
        5, 5, 10
    );
    let api = ApiServer::start(env, "fig11-apiserver").await?;
    let mut cmp = Table::new(&[
        "shims",
        "create / update spread",
        "writes: model / real",
        "409 Conflict: model / real",
        "409 AlreadyExists: model / real",
        "GETs: model / real",
        "stored at: model / real",
    ]);
    let mut verdict_rows = Vec::new();
    for (shims, spread) in [(4usize, 500u64), (8, 0), (8, 500), (8, 2_000)] {
        let create_flag = format!("--kube-create-spread={spread}ms");
        let update_flag = format!("--kube-update-spread={spread}ms");
        let mut procs = Vec::new();
        for i in 0..shims {
            procs.push(
                Shim::start(
                    env,
                    &format!("fig11-shim-{shims}-{spread}-{i}"),
                    Some(&api.shim_kubeconfig),
                    &[&create_flag, &update_flag],
                )
                .await?,
            );
        }
        let cfg = LoadConfig {
            kind: TargetKind::Shim,
            targets: procs.iter().map(|s| s.grpc.clone()).collect(),
            rollout: rollout(rpods, rifaces, 1, jitter, "fig11"),
            concurrency: 64,
            connections: 1,
            rpc: Rpc::Mixed,
            duration: None,
            shim_metrics: procs.iter().map(|s| s.http.clone()).collect(),
            envoy_admin: None,
            kube: Some(api.target()),
            converge_shims: procs.iter().map(|s| s.grpc.clone()).collect(),
            converge_timeout: Duration::from_secs(60),
        };
        let real = load::run(&cfg).await?;
        check_complete("figure 11: real run", &real)?;
        drop(procs);
        let a = real.api.clone().unwrap_or_default();
        let (rw, rc, rae, rg) = (
            a.writes(),
            a.get("PUT", "409"),
            a.get("POST", "409"),
            a.verb("GET"),
        );
        let mut m = [0f64; 5];
        let seeds = 5u64;
        for seed in 0..seeds {
            let c = Cluster {
                nodes: shims as u32,
                pods: rpods as u32,
                apps: 1,
                interfaces: rifaces as u32,
                interfaces_per_app: rifaces as u32,
                over_ms: u64::try_from(jitter.as_millis()).unwrap_or(0),
                request_ms: 5,
                watch_ms: 5,
                server_qps: 0.0,
                create_spread: Duration::from_millis(spread),
                update_spread: Duration::from_millis(spread),
                round_robin: true,
                seed: 1 + seed,
                ..base.clone()
            };
            let (r, _) = model(c).await?;
            m[0] += r.writes() as f64;
            m[1] += r.conflicts as f64;
            m[2] += r.already_exists as f64;
            m[3] += r.gets as f64;
            m[4] += r.all_stored_ms.unwrap_or(0) as f64;
        }
        for v in &mut m {
            *v /= seeds as f64;
        }
        cmp.row([
            shims.to_string(),
            format!("{spread} ms"),
            format!("{:.1} / {rw}", m[0]),
            format!("{:.1} / {rc}", m[1]),
            format!("{:.1} / {rae}", m[2]),
            format!("{:.1} / {rg}", m[3]),
            format!(
                "{} / {}",
                fmt_dur(Duration::from_millis(m[4] as u64)),
                real.converged.map_or("-".into(), fmt_dur)
            ),
        ]);
        verdict_rows.push((
            shims,
            spread,
            m[0],
            rw as f64,
            m[1] + m[2],
            (rc + rae) as f64,
        ));
    }
    print_table("", &cmp);
    drop(api);

    let mut v = Vec::new();
    let (Some((_, first)), Some((_, last))) = (by_nodes.first(), by_nodes.last()) else {
        bail!("figure 11: no runs");
    };
    let growth = ratio(last.writes() as f64, first.writes() as f64);
    v.push(Verdict::check(
        "11. model: API writes at 1,000 nodes / at 10 nodes",
        "grows with keys, not nodes (<= 2x)",
        format!("{growth:.2}x ({} -> {})", first.writes(), last.writes()),
        growth <= 2.0,
    ));
    v.push(Verdict::check(
        "11. model: every mapping stored at 1,000 nodes (virtual time)",
        "at most 10 s after the last registration",
        format!(
            "at {}; last registration at {}",
            ms(last.all_stored_ms),
            ms(Some(last.last_call_ms))
        ),
        last.all_stored_ms
            .is_some_and(|s| s <= last.last_call_ms + 10_000),
    ));
    v.push(Verdict::info(
        "11. model: 409s at 1,000 nodes by create and update spread 0 / 500ms / 2s",
        by_spread
            .iter()
            .map(|(_, r)| r.all_409s().to_string())
            .collect::<Vec<_>>()
            .join(" / "),
    ));
    for (shims, spread, mw, rw, m409, r409) in verdict_rows {
        let wr = ratio(mw, rw);
        v.push(Verdict::check(
            format!("11. model / real API writes, {shims} shims, spread {spread} ms"),
            "0.67-1.5",
            format!("{wr:.2} ({mw:.1} / {rw}); 409s {m409:.1} / {r409}"),
            (0.67..=1.5).contains(&wr),
        ));
    }
    Ok(v)
}

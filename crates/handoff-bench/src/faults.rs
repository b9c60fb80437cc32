//! Under load, kill -9 each service in turn and restart it, first with one replica of each,
//! then with two; restart Postgres; kill -9 one node of the three-node NATS cluster and
//! bring it back; restart every NATS node; then compare what the customers were told was
//! stored with what their platform received.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::{Cluster, SERVICES};
use crate::infra::{NatsCluster, OwnPostgres};
use crate::load::{Customers, Key, Tracker};

#[derive(Debug, Serialize)]
pub struct Kill {
    pub service: String,
    pub replicas: usize,
    pub at_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct FaultReport {
    pub customers: usize,
    pub accepted: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub duplicates_sharing_webhook_id: usize,
    pub out_of_order_customers: usize,
    /// Each such customer's first inversion: the message answered early, the earlier one
    /// answered after it, and when (seconds into the run) that late answer arrived, to set
    /// beside `kills`.
    pub out_of_order: Vec<(String, u64, u64, f64)>,
    /// The longest any one message waited (accepted → arrival), and whose it was.
    pub longest_wait_ms: f64,
    pub longest_wait_customer: String,
    /// Per kill: the longest wait of a message accepted within 10 s after it.
    pub worst_wait_after_kill_ms: Vec<(String, f64)>,
    pub kills: Vec<Kill>,
    pub lost_keys: Vec<Key>,
    /// Of the lost (nothing arrived for 30 s with them outstanding), how many still arrived
    /// within another 60 s: a stall, not a loss, though counted as one above.
    pub lost_then_arrived: usize,
    /// What the hub parked meanwhile (`dead_letters`): service, reason, count.
    pub parked: Vec<(String, String, i64)>,
    /// How far each lost message got, read from the router's transcript: `not_recorded`
    /// (lost before the router: the events stream), `no_answer` (the router has it, the
    /// bot's answer is not recorded: the bot's command or its reply), `answered` (the
    /// answer is recorded: its delivery command was lost). Counts by stage.
    pub lost_stages: Vec<(String, usize)>,
}

pub async fn run(
    cluster: &mut Cluster,
    nats: &mut NatsCluster,
    pg: &OwnPostgres,
    customers_n: usize,
) -> anyhow::Result<FaultReport> {
    for service in SERVICES {
        cluster.spawn(service).await?;
    }
    let customers = Customers::new(cluster.inlets());
    let tracker = Tracker::watch(&cluster.customer);
    let running = Arc::new(AtomicBool::new(true));
    let origin = Instant::now();
    // Each customer writes every ~600 ms, a message at a time, retrying a refused post (a
    // killed inlet) with the same message id until the hub stores it.
    let writers: Vec<_> = (0..customers_n)
        .map(|i| {
            let customers = customers.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let member = format!("f-{i}");
                let mut accepted: Vec<(u64, Instant)> = Vec::new();
                let mut seq = 0;
                tokio::time::sleep(Duration::from_millis((i as u64 * 600) / customers_n as u64))
                    .await;
                while running.load(Ordering::Relaxed) {
                    if let Some(at) = customers.send(&member, seq, Duration::from_secs(60)).await {
                        accepted.push((seq, at));
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
                (member, accepted)
            })
        })
        .collect();

    let mut kills = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for replicas in [1, 2] {
        if replicas == 2 {
            for service in SERVICES {
                cluster.spawn(service).await?;
            }
            customers.set_inlets(cluster.inlets());
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        for service in SERVICES {
            eprintln!("kill -9 {service} ({replicas} running)");
            kills.push(Kill {
                service: service.to_string(),
                replicas,
                at_secs: origin.elapsed().as_secs_f64(),
            });
            cluster.kill(service, 0).await?;
            if service == "inlet-gateway" {
                customers.set_inlets(cluster.inlets());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.spawn(service).await?;
            customers.set_inlets(cluster.inlets());
            tokio::time::sleep(Duration::from_secs(7)).await;
        }
    }
    // The servers under the services, with two replicas of each service running.
    let mut fault = |what: &str| {
        eprintln!("{what}");
        kills.push(Kill {
            service: what.to_string(),
            replicas: 2,
            at_secs: origin.elapsed().as_secs_f64(),
        });
    };
    fault("Postgres restarted (fast)");
    pg.restart().await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    fault("kill -9 of one NATS node");
    nats.kill(1).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.restart(1).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    fault("every NATS node restarted");
    nats.restart_all().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    running.store(false, Ordering::Relaxed);
    let mut accepted: HashMap<Key, Instant> = HashMap::new();
    for w in writers {
        let (member, sent) = w.await?;
        for (seq, at) in sent {
            accepted.insert((member.clone(), seq), at);
        }
    }
    // Quiet: everything accepted has arrived (and 3 s passed for a late duplicate to
    // show), or nothing has arrived for 30 s (a stall that long is reported as loss).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrivals = tracker.arrivals();
        let all = accepted.keys().all(|k| arrivals.contains_key(k));
        let idle = tracker
            .last_arrival()
            .map_or(Duration::MAX, |t| t.elapsed());
        if (all && idle > Duration::from_secs(3))
            || idle > Duration::from_secs(30)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut report = check(&accepted, &tracker, kills, origin, customers_n);
    if report.lost > 0 {
        // Was it a stall? Wait a minute more and count who arrived after all.
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let arrivals = tracker.arrivals();
            if report.lost_keys.iter().all(|k| arrivals.contains_key(k)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let arrivals = tracker.arrivals();
        report.lost_then_arrived = report
            .lost_keys
            .iter()
            .filter(|k| arrivals.contains_key(*k))
            .count();
    }
    // What the hub's database says is a diagnosis, not the verdict: a database the run can
    // no longer reach leaves these empty rather than failing the report.
    if let Ok(pool) = sqlx::PgPool::connect(&cluster.db_url).await {
        report.parked = parked(&pool).await.unwrap_or_default();
        report.lost_stages = lost_stages(&pool, &report.lost_keys)
            .await
            .unwrap_or_default();
    }
    Ok(report)
}

/// Where the lost messages stopped (see [`FaultReport::lost_stages`]).
async fn lost_stages(pool: &sqlx::PgPool, lost: &[Key]) -> anyhow::Result<Vec<(String, usize)>> {
    let mut stages: std::collections::BTreeMap<&str, usize> = Default::default();
    for (member, seq) in lost {
        let (recorded, answered): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE author = 'customer'
                              AND source_message_id = $1),
                    EXISTS (SELECT 1 FROM messages WHERE author = 'bot'
                              AND content->>'text' LIKE $2)",
        )
        .bind(format!("{member}-{seq}"))
        .bind(format!("%{member}#{seq}#%"))
        .fetch_one(pool)
        .await?;
        let stage = match (recorded, answered) {
            (false, _) => "not_recorded",
            (true, false) => "no_answer",
            (true, true) => "answered",
        };
        *stages.entry(stage).or_default() += 1;
    }
    Ok(stages
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect())
}

/// The hub's dead letters, by service and reason.
async fn parked(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, String, i64)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT service, left(reason, 200), count(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

fn check(
    accepted: &HashMap<Key, Instant>,
    tracker: &Tracker,
    kills: Vec<Kill>,
    origin: Instant,
    customers: usize,
) -> FaultReport {
    let arrivals = tracker.arrivals();
    let mut lost_keys: Vec<Key> = accepted
        .keys()
        .filter(|k| !arrivals.contains_key(*k))
        .cloned()
        .collect();
    lost_keys.sort();
    let mut duplicated = 0;
    let mut same_id = 0;
    for a in arrivals.values().filter(|a| a.len() > 1) {
        duplicated += a.len() - 1;
        if a.iter().all(|(_, id)| id == &a[0].1) {
            same_id += a.len() - 1;
        }
    }
    let mut out_of_order: Vec<(String, u64, u64, f64)> = tracker
        .order()
        .into_iter()
        .filter_map(|(member, seqs)| {
            let w = seqs.windows(2).find(|w| w[0] > w[1])?;
            let late = arrivals
                .get(&(member.clone(), w[1]))
                .and_then(|a| a.first())
                .map_or(0.0, |(at, _)| {
                    at.saturating_duration_since(origin).as_secs_f64()
                });
            Some((member, w[0], w[1], late))
        })
        .collect();
    out_of_order.sort_by(|a, b| a.3.total_cmp(&b.3));
    let mut longest = (0.0, String::new());
    let mut waits: Vec<(Instant, f64)> = Vec::new();
    for (key, sent) in accepted {
        if let Some((arrived, _)) = arrivals.get(key).and_then(|a| a.first()) {
            let ms = arrived.saturating_duration_since(*sent).as_secs_f64() * 1000.0;
            waits.push((*sent, ms));
            if ms > longest.0 {
                longest = (ms, key.0.clone());
            }
        }
    }
    let worst_wait_after_kill_ms = kills
        .iter()
        .map(|k| {
            let from = origin + Duration::from_secs_f64(k.at_secs);
            let to = from + Duration::from_secs(10);
            let worst = waits
                .iter()
                .filter(|(sent, _)| *sent >= from - Duration::from_secs(2) && *sent < to)
                .map(|(_, ms)| *ms)
                .fold(0.0, f64::max);
            (format!("{} ×{}", k.service, k.replicas), worst)
        })
        .collect();
    FaultReport {
        customers,
        accepted: accepted.len(),
        received: arrivals.len(),
        lost: lost_keys.len(),
        duplicated,
        duplicates_sharing_webhook_id: same_id,
        out_of_order_customers: out_of_order.len(),
        out_of_order,
        longest_wait_ms: longest.0,
        longest_wait_customer: longest.1,
        worst_wait_after_kill_ms,
        kills,
        lost_keys,
        lost_then_arrived: 0,
        parked: Vec::new(),
        lost_stages: Vec::new(),
    }
}

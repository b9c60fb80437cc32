//! The hot path measured end to end: webhook in → JetStream → router → bot → router →
//! Send API, against the same run's baselines.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::baseline;
use crate::cluster::Cluster;
use crate::load::{Customers, Percentiles, Tracker, percentiles};

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub customers: usize,
    pub in_flight: usize,
    pub seconds: f64,
    pub answered: u64,
    pub answered_per_sec: f64,
    /// The machine's CPU over the measured window (`/proc/stat`), per answered message.
    pub cpu: crate::cpu::Usage,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub offered_per_sec: f64,
    pub seconds: f64,
    pub end_to_end: Percentiles,
    /// Sorted samples in ms (for the plot).
    #[serde(skip)]
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct SlowBot {
    pub customers: usize,
    pub bot_think_ms: u64,
    pub all_answered_after_ms: f64,
    pub answered: usize,
}

/// Everyone at once on an inlet whose bot is Selarti's AI, which answers on its webhook
/// after thinking: the lane is free once the message is sent, so no customer waits for
/// another's answer.
#[derive(Debug, Serialize)]
pub struct SelartiCrowd {
    pub customers: usize,
    pub ai_think_ms: u64,
    /// From a customer's post to their answer, over all customers.
    pub each_answered_within: Percentiles,
    pub all_answered_after_ms: f64,
    pub answered: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub postgres: baseline::PostgresBaseline,
    pub jetstream: baseline::JetStreamBaseline,
    pub throughput: Throughput,
    pub latency_at_half_load: Latency,
    pub slow_bot: SlowBot,
    pub selarti_crowd: SelartiCrowd,
    pub ratios: Ratios,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    /// Answered messages/s ÷ Postgres write-set transactions/s (target ≥ 0.5).
    pub throughput_vs_postgres: f64,
    /// End-to-end p50 ÷ one JetStream publish's p50 (how many publish round trips a
    /// message costs in latency).
    pub latency_p50_vs_jetstream_publish_p50: f64,
    pub latency_p99_vs_jetstream_publish_p99: f64,
}

pub struct Options {
    pub customers: usize,
    pub in_flight: usize,
    pub run: Duration,
}

/// Closed loop: `in_flight` customers at a time each send and wait for their answer.
async fn throughput(customers: &Customers, tracker: &Tracker, o: &Options) -> Throughput {
    let answered = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Instant::now() + o.run + Duration::from_secs(2);
    let workers = (0..o.in_flight).map(|w| {
        let customers = customers.clone();
        let tracker = tracker.clone();
        let answered = answered.clone();
        let counting = counting.clone();
        let members: Vec<String> = (w..o.customers)
            .step_by(o.in_flight)
            .map(|i| format!("tp-{i}"))
            .collect();
        tokio::spawn(async move {
            let mut seq = 0;
            while Instant::now() < stop {
                for m in &members {
                    let answer = tracker.expect((m.clone(), seq));
                    if customers
                        .send(m, seq, Duration::from_secs(10))
                        .await
                        .is_none()
                    {
                        continue;
                    }
                    if tokio::time::timeout(Duration::from_secs(30), answer)
                        .await
                        .is_ok()
                        && counting.load(Ordering::Relaxed)
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq += 1;
            }
        })
    });
    let workers: Vec<_> = workers.collect();
    // Two seconds of warm-up (connections, pools, leases), then the measured window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_start = crate::cpu::read();
    tokio::time::sleep(o.run).await;
    let cpu_end = crate::cpu::read();
    counting.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let n = answered.load(Ordering::Relaxed);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for w in workers {
        let _ = w.await;
    }
    Throughput {
        customers: o.customers,
        in_flight: o.in_flight,
        seconds,
        answered: n,
        answered_per_sec: n as f64 / seconds,
        cpu: crate::cpu::usage(&cpu_start, &cpu_end, seconds, cpus, n),
    }
}

/// Open loop at a fixed rate: each message is sent on schedule whatever the others do.
pub async fn latency(
    customers: &Customers,
    tracker: &Tracker,
    rate: f64,
    run: Duration,
    members: usize,
) -> Latency {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (run.as_secs_f64() * rate) as u64;
    let seq = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let customers = customers.clone();
        let tracker = tracker.clone();
        let member = format!("lat-{}", i as usize % members);
        let n = seq.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let answer = tracker.expect((member.clone(), n));
            let sent = customers.send(&member, n, Duration::from_secs(10)).await?;
            let arrived = tokio::time::timeout(Duration::from_secs(30), answer)
                .await
                .ok()?
                .ok()?;
            Some(arrived.saturating_duration_since(sent))
        }));
    }
    let mut samples: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    let end_to_end = percentiles(&mut samples);
    Latency {
        offered_per_sec: rate,
        seconds: run.as_secs_f64(),
        end_to_end,
        samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
    }
}

/// Everyone at once, with a bot that thinks for a second per answer.
async fn slow_bot(
    cluster: &Cluster,
    customers: &Customers,
    tracker: &Tracker,
    n: usize,
) -> SlowBot {
    let think = Duration::from_secs(1);
    cluster.bot.set_think_time(think);
    let started = Instant::now();
    let tasks = (0..n).map(|i| {
        let customers = customers.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let member = format!("crowd-{i}");
            let answer = tracker.expect((member.clone(), 0));
            customers.send(&member, 0, Duration::from_secs(10)).await?;
            tokio::time::timeout(Duration::from_secs(60), answer)
                .await
                .ok()?
                .ok()
        })
    });
    let arrivals: Vec<Instant> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    cluster.bot.set_think_time(Duration::ZERO);
    let last = arrivals.iter().max().copied().unwrap_or(started);
    SlowBot {
        customers: n,
        bot_think_ms: think.as_millis() as u64,
        all_answered_after_ms: last.duration_since(started).as_secs_f64() * 1000.0,
        answered: arrivals.len(),
    }
}

async fn selarti_crowd(
    cluster: &Cluster,
    customers: &Customers,
    tracker: &Tracker,
    n: usize,
) -> SelartiCrowd {
    let think = Duration::from_secs(2);
    cluster.selarti.set_think_time(think);
    let customers = customers.on_channel(crate::cluster::AI_INLET);
    let started = Instant::now();
    let tasks = (0..n).map(|i| {
        let customers = customers.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let member = format!("ai-crowd-{i}");
            let answer = tracker.expect((member.clone(), 0));
            let sent = customers.send(&member, 0, Duration::from_secs(10)).await?;
            let at = tokio::time::timeout(Duration::from_secs(60), answer)
                .await
                .ok()?
                .ok()?;
            Some((sent, at))
        })
    });
    let answered: Vec<(Instant, Instant)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    cluster.selarti.set_think_time(Duration::ZERO);
    let mut waits: Vec<Duration> = answered.iter().map(|(s, a)| a.duration_since(*s)).collect();
    let last = answered.iter().map(|(_, a)| *a).max().unwrap_or(started);
    SelartiCrowd {
        customers: n,
        ai_think_ms: think.as_millis() as u64,
        each_answered_within: percentiles(&mut waits),
        all_answered_after_ms: last.duration_since(started).as_secs_f64() * 1000.0,
        answered: answered.len(),
    }
}

/// Only the open-loop latency phase, at a rate of the caller's choosing: for profiling where
/// the time goes at a given load (e.g. a trickle, to tell fixed delays from queueing).
pub async fn latency_only(cluster: &mut Cluster, o: Options, rate: f64) -> anyhow::Result<Latency> {
    for service in crate::cluster::SERVICES {
        cluster.spawn(service).await?;
    }
    let customers = Customers::new(cluster.inlets());
    let tracker = Tracker::watch(&cluster.customer);
    let lat = latency(&customers, &tracker, rate, o.run, o.customers).await;
    eprintln!(
        "  {rate:.0}/s: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.end_to_end.p50_ms, lat.end_to_end.p90_ms, lat.end_to_end.p99_ms, lat.end_to_end.max_ms
    );
    Ok(lat)
}

pub async fn run(cluster: &mut Cluster, o: Options) -> anyhow::Result<Report> {
    for service in crate::cluster::SERVICES {
        cluster.spawn(service).await?;
    }
    eprintln!("baselines…");
    let postgres = baseline::postgres(&cluster.db_url, Duration::from_secs(5)).await?;
    let jetstream = baseline::jetstream(
        &cluster.nats_url,
        &format!("{}_BASE", cluster.prefix.to_uppercase()),
        Duration::from_secs(3),
    )
    .await?;
    eprintln!(
        "  postgres {:.0} tx/s, jetstream publish {:.0}/s (p50 {:.3} ms)",
        postgres.transactions_per_sec, jetstream.publishes_per_sec, jetstream.latency.p50_ms
    );
    let customers = Customers::new(cluster.inlets());
    let tracker = Tracker::watch(&cluster.customer);

    eprintln!("flat out, instant bot…");
    let tp = throughput(&customers, &tracker, &o).await;
    eprintln!(
        "  {:.0} answered/s; machine {:.0} % busy, {:.2} core-ms per answered message",
        tp.answered_per_sec,
        tp.cpu.busy_share * 100.0,
        tp.cpu.ms_per_unit
    );
    for (process, ms) in &tp.cpu.by_process_ms_per_unit {
        eprintln!("    {process:<16} {ms:.3} core-ms per answered message");
    }
    cluster.customer.clear();

    let rate = tp.answered_per_sec / 2.0;
    eprintln!("latency at half that load ({rate:.0}/s)…");
    let lat = latency(&customers, &tracker, rate, o.run, o.customers).await;
    eprintln!(
        "  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.end_to_end.p50_ms, lat.end_to_end.p99_ms, lat.end_to_end.max_ms
    );
    cluster.customer.clear();

    eprintln!("a 1-s bot and 1000 customers at once…");
    let slow = slow_bot(cluster, &customers, &tracker, 1000).await;
    eprintln!(
        "  last answered after {:.0} ms ({} of {})",
        slow.all_answered_after_ms, slow.answered, slow.customers
    );

    eprintln!("Selarti's AI thinking 2 s, 200 customers at once…");
    let crowd = selarti_crowd(cluster, &customers, &tracker, 200).await;
    eprintln!(
        "  each answered within {:.0} ms (p50 {:.0} ms); last after {:.0} ms ({} of {})",
        crowd.each_answered_within.max_ms,
        crowd.each_answered_within.p50_ms,
        crowd.all_answered_after_ms,
        crowd.answered,
        crowd.customers
    );

    let ratios = Ratios {
        throughput_vs_postgres: tp.answered_per_sec / postgres.transactions_per_sec,
        latency_p50_vs_jetstream_publish_p50: lat.end_to_end.p50_ms / jetstream.latency.p50_ms,
        latency_p99_vs_jetstream_publish_p99: lat.end_to_end.p99_ms / jetstream.latency.p99_ms,
    };
    Ok(Report {
        machine: machine(),
        postgres,
        jetstream,
        throughput: tp,
        latency_at_half_load: lat,
        slow_bot: slow,
        selarti_crowd: crowd,
        ratios,
    })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}")
}

/// The latency distribution as an SVG (cumulative: share of messages answered within x ms).
pub fn latency_svg(lat: &Latency) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let samples = &lat.samples_ms;
    let max_x = lat.end_to_end.max_ms.max(1.0);
    let n = samples.len().max(1) as f64;
    let mut points = String::new();
    let step = (samples.len() / 400).max(1);
    for (i, v) in samples
        .iter()
        .enumerate()
        .step_by(step)
        .chain(samples.iter().enumerate().next_back())
    {
        let x = pad + (v / max_x) * (w - 2.0 * pad);
        let y = h - pad - ((i + 1) as f64 / n) * (h - 2.0 * pad);
        points.push_str(&format!("{x:.1},{y:.1} "));
    }
    let p = &lat.end_to_end;
    let mut marks = String::new();
    for (label, v) in [("p50", p.p50_ms), ("p99", p.p99_ms), ("max", p.max_ms)] {
        let x = pad + (v / max_x) * (w - 2.0 * pad);
        marks.push_str(&format!(
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#c33" stroke-dasharray="4"/><text x="{x:.1}" y="{ty}" font-size="11" fill="#c33" text-anchor="middle">{label} {v:.1} ms</text>"##,
            top = pad, bottom = h - pad, ty = pad - 6.0 - if label == "p99" { 12.0 } else { 0.0 },
        ));
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="18" font-size="13" text-anchor="middle">End-to-end latency at {rate:.0} msg/s (half capacity), {count} messages</text>
<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="black"/>
<text x="{cx}" y="{xl}" font-size="11" text-anchor="middle">accepted → arrival at the simulated platform (ms, 0 to {max_x:.1})</text>
<text x="14" y="{cy}" font-size="11" transform="rotate(-90 14 {cy})" text-anchor="middle">share of messages</text>
<text x="{tx}" y="{bottom}" font-size="10" text-anchor="end">0</text><text x="{tx}" y="{ty}" font-size="10" text-anchor="end">1</text>
<polyline fill="none" stroke="#246" stroke-width="2" points="{points}"/>
{marks}
</svg>
"##,
        cx = w / 2.0,
        cy = h / 2.0,
        rate = lat.offered_per_sec,
        count = p.count,
        bottom = h - pad,
        right = w - pad,
        xl = h - 12.0,
        tx = pad - 4.0,
        ty = pad + 4.0,
    )
}

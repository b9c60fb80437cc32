//! How many web chat visitors one inlet-gateway holds (`handoff-bench visitors`): N
//! visitors open a session and a WebSocket each and stay connected, idle, then chat (each
//! writes about once every 20 s and waits for the bot's answer). Reported: the gateway's
//! resident memory before, idle and chatting (per connection), its CPU per message, and
//! the answers' latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, ORG, WEBCHAT};

#[derive(Debug, Serialize)]
pub struct Report {
    pub visitors: usize,
    pub connected: usize,
    pub connect_seconds: f64,
    pub gateway_rss_mb_before: f64,
    pub gateway_rss_mb_idle: f64,
    pub kb_per_idle_visitor: f64,
    pub chatting_seconds: u64,
    pub messages_sent: usize,
    pub answers_received: usize,
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
    pub gateway_rss_mb_chatting: f64,
    pub kb_per_chatting_visitor: f64,
    pub gateway_cpu_ms_per_message: f64,
}

/// Resident memory of process `pid`, in MiB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or_default()
        / 1024.0
}

/// CPU seconds process `pid` has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) are space-separated.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields of the line: 12 and 13 after `)`.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_visitor(http: &reqwest::Client, base: &str) -> anyhow::Result<Socket> {
    let session: Value = http
        .post(format!("{base}/webchat/v1/{ORG}/{WEBCHAT}/session"))
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = session["token"].as_str().unwrap_or_default();
    let ws = base.replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!(
        "{ws}/webchat/v1/{ORG}/{WEBCHAT}/ws?token={token}&after=0"
    ))
    .await?;
    // Connected once the gateway has its mailbox open.
    while let Some(frame) = socket.next().await {
        if let Message::Text(t) = frame?
            && t.contains("\"ready\"")
        {
            return Ok(socket);
        }
    }
    anyhow::bail!("closed before ready")
}

pub async fn run(cluster: &mut Cluster, count: usize, chat_seconds: u64) -> anyhow::Result<Report> {
    for service in crate::cluster::SERVICES {
        cluster.spawn(service).await?;
    }
    let base = cluster.inlets()[0].clone();
    let pid = cluster
        .pid("inlet-gateway")
        .expect("the inlet-gateway runs");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mb(pid);

    eprintln!("{count} visitors connecting…");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut connecting = Vec::with_capacity(count);
    for _ in 0..count {
        let (http, base, gate) = (http.clone(), base.clone(), gate.clone());
        connecting.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await;
            connect_visitor(&http, &base).await
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    for c in connecting {
        match c.await? {
            Ok(s) => sockets.push(s),
            Err(e) => eprintln!("  a visitor could not connect: {e}"),
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = sockets.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_mb(pid);
    eprintln!(
        "  {connected} connected in {connect_seconds:.1} s; gateway {before:.1} -> {idle:.1} MiB"
    );

    eprintln!("chatting for {chat_seconds} s (each visitor about once every 20 s)…");
    let cpu_before = cpu_seconds(pid);
    let until = Instant::now() + Duration::from_secs(chat_seconds);
    let mut chatting = Vec::with_capacity(connected);
    for (i, mut socket) in sockets.into_iter().enumerate() {
        chatting.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sent = 0usize;
            // Spread the visitors' first messages over the first 20 s.
            let mut next = Instant::now() + Duration::from_millis((i as u64 * 7919) % 20_000);
            loop {
                tokio::time::sleep_until(next.into()).await;
                if Instant::now() >= until {
                    break;
                }
                let frame = json!({"type": "text", "text": "where is my order?", "clientId": format!("m{i}-{sent}")});
                let asked = Instant::now();
                if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                    break;
                }
                sent += 1;
                // The bot's answer (the echo comes first).
                let answered = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(m)) = socket.next().await {
                        if let Message::Text(t) = m
                            && t.contains("\"from\":\"bot\"")
                        {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if matches!(answered, Ok(true)) {
                    latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
                }
                next += Duration::from_secs(20);
            }
            (sent, latencies, socket)
        }));
    }
    let mut sent = 0;
    let mut latencies = Vec::new();
    let mut kept = Vec::new();
    for c in chatting {
        let (s, l, socket) = c.await?;
        sent += s;
        latencies.extend(l);
        kept.push(socket);
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    let chatting_rss = rss_mb(pid);
    latencies.sort_by(f64::total_cmp);
    let report = Report {
        visitors: count,
        connected,
        connect_seconds,
        gateway_rss_mb_before: before,
        gateway_rss_mb_idle: idle,
        kb_per_idle_visitor: (idle - before) * 1024.0 / connected.max(1) as f64,
        chatting_seconds: chat_seconds,
        messages_sent: sent,
        answers_received: latencies.len(),
        answer_p50_ms: percentile(&latencies, 0.5),
        answer_p99_ms: percentile(&latencies, 0.99),
        gateway_rss_mb_chatting: chatting_rss,
        kb_per_chatting_visitor: (chatting_rss - before) * 1024.0 / connected.max(1) as f64,
        gateway_cpu_ms_per_message: cpu * 1000.0 / sent.max(1) as f64,
    };
    drop(kept);
    Ok(report)
}

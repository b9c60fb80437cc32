//! `handoff-bench`: the project's benchmark and fault run (see docs/performance.md and
//! docs/reliability.md). It starts the release binaries of the services as processes
//! against the local Postgres and NATS, simulates the customers' platform and the bot in
//! this process, and writes its results under `docs/bench/`.
//!
//! ```text
//! handoff-bench bench  [--out docs/bench] [--seconds 10] [--customers 1000] [--in-flight 256]
//! handoff-bench latency [--rate 50] [--seconds 10]   (profiling: the latency phase alone)
//! handoff-bench faults [--out docs/bench] [--customers 60]   (on servers of its own)
//! ```

mod baseline;
mod bench;
mod cluster;
mod cpu;
mod faults;
mod infra;
mod load;
mod visitors;

use std::path::PathBuf;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "bench".into());
    // Answered before anything starts, wherever it is asked (`bench --help` too): the modes
    // start servers and services, and a bench run overwrites docs/bench.
    if mode == "help" || args.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        println!(
            "handoff-bench bench  [--out docs/bench] [--seconds 10] [--customers 1000] [--in-flight 256]\n\
             handoff-bench latency [--rate 50] [--seconds 10]\n\
             handoff-bench faults [--out docs/bench] [--customers 60]\n\
             handoff-bench visitors [--out docs/bench] [--visitors 2000] [--seconds 40]\n\n\
             Use scripts/bench and scripts/faults: they build the release binaries first."
        );
        return Ok(());
    }
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "docs/bench".into()));
    let number = |name: &str, default: usize| {
        arg(&args, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // The services sit next to this binary (target/release).
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    std::fs::create_dir_all(&out)?;
    // The fault run restarts Postgres and NATS nodes: it brings servers of its own, a
    // three-node JetStream cluster (streams with three replicas, as in production).
    let mut own = if mode == "faults" {
        let nats = infra::NatsCluster::start(3).await?;
        let pg = infra::OwnPostgres::start().await?;
        Some((nats, pg))
    } else {
        None
    };
    let mut cluster = match &own {
        Some((nats, pg)) => {
            cluster::Cluster::start_on(bin_dir, pg.url("postgres"), nats.url(), nats.len()).await?
        }
        None => cluster::Cluster::start(bin_dir).await?,
    };
    let result = match mode.as_str() {
        "bench" => bench::run(
            &mut cluster,
            bench::Options {
                customers: number("--customers", 1000),
                in_flight: number("--in-flight", 256),
                run: Duration::from_secs(number("--seconds", 10) as u64),
            },
        )
        .await
        .and_then(|report| {
            std::fs::write(
                out.join("latency.svg"),
                bench::latency_svg(&report.latency_at_half_load),
            )?;
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(out.join("bench.json"), &json)?;
            println!("{json}");
            Ok(())
        }),
        "latency" => {
            let rate = arg(&args, "--rate")
                .and_then(|v| v.parse().ok())
                .unwrap_or(50.0);
            bench::latency_only(
                &mut cluster,
                bench::Options {
                    customers: number("--customers", 1000),
                    in_flight: number("--in-flight", 256),
                    run: Duration::from_secs(number("--seconds", 10) as u64),
                },
                rate,
            )
            .await
            .map(|_| ())
        }
        "visitors" => visitors::run(
            &mut cluster,
            number("--visitors", 2000),
            number("--seconds", 40) as u64,
        )
        .await
        .and_then(|report| {
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(out.join("visitors.json"), &json)?;
            println!("{json}");
            Ok(())
        }),
        "faults" => {
            let (nats, pg) = own.as_mut().expect("the fault run's own servers");
            faults::run(&mut cluster, nats, pg, number("--customers", 60))
                .await
                .and_then(|report| {
                    let json = serde_json::to_string_pretty(&report)?;
                    std::fs::write(out.join("faults.json"), &json)?;
                    println!("{json}");
                    Ok(())
                })
        }
        other => Err(anyhow::anyhow!(
            "unknown mode `{other}`: use bench or faults"
        )),
    };
    cluster.stop().await;
    result
}

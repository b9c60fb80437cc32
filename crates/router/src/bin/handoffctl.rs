//! handoffctl: operate a Handoff deployment. Reads the same settings as the services
//! (`HANDOFF_CONFIG`, `HANDOFF_*`), so it talks to the same Postgres and NATS.

use clap::{Parser, Subcommand};
use handoff_bus::{Bus, BusSettings};
use handoff_config::Settings;
use router::dead_letters;

#[derive(Parser)]
#[command(name = "handoffctl", about = "Operate a Handoff deployment")]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Messages parked because they could not be handled.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Subcommand)]
enum DeadLetters {
    /// List parked messages, newest first.
    List {
        /// Include replayed and dropped ones.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Publish parked messages again where they were consumed from.
    Replay { ids: Vec<i64> },
    /// Give parked messages up.
    Drop { ids: Vec<i64> },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoffctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let pool = router::connect_database(&settings).await?;
    let Command::DeadLetters(command) = cli.command;
    match command {
        DeadLetters::List { all, limit } => {
            let letters = dead_letters::list(&pool, all, limit).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print_table(&letters);
            }
        }
        DeadLetters::Replay { ids } => {
            let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
            for id in ids {
                dead_letters::replay(&pool, &bus, id).await?;
                println!("replayed {id}");
            }
        }
        DeadLetters::Drop { ids } => {
            for id in ids {
                dead_letters::drop(&pool, id).await?;
                println!("dropped {id}");
            }
        }
    }
    Ok(())
}

fn print_table(letters: &[dead_letters::DeadLetter]) {
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:>6}  {:<20}  {:<20}  {:<18}  {:<8}  REASON",
        "ID", "PARKED AT", "SERVICE", "KIND", "STATE"
    );
    for l in letters {
        let reason: String = l.reason.chars().take(80).collect();
        println!(
            "{:>6}  {:<20}  {:<20}  {:<18}  {:<8}  {reason}",
            l.id,
            l.parked_at.chars().take(19).collect::<String>(),
            l.service,
            l.kind,
            l.state
        );
    }
}

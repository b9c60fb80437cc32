//! Runs the simulated custom platform, the demo bot and Selarti's API with its scripted AI
//! for the demo (`scripts/run`; `scripts/run --bot selarti` makes Selarti the bot).
//!
//! `handoff-sim zendesk` instead runs the Zendesk Chat Conversations API simulator with one
//! visitor typing in this terminal.

use std::time::Duration;

use handoff_simulators::{CustomPlatform, DemoBot, SelartiSim, ZendeskSim};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("zendesk") {
        return zendesk().await;
    }
    let platform_addr =
        std::env::var("SIM_PLATFORM_ADDR").unwrap_or_else(|_| "127.0.0.1:9100".into());
    let bot_addr = std::env::var("SIM_BOT_ADDR").unwrap_or_else(|_| "127.0.0.1:9200".into());
    let platform = CustomPlatform::start(&platform_addr, true).await?;
    let bot = DemoBot::start(&bot_addr, true).await?;
    println!(
        "[sim] custom platform on {} (Send API /send, Livechat API /livechat, Relay API /relay)",
        platform.url("")
    );
    println!("[sim] demo bot on {}", bot.url());
    let selarti_addr =
        std::env::var("SIM_SELARTI_ADDR").unwrap_or_else(|_| "127.0.0.1:9400".into());
    let selarti_key =
        std::env::var("SIM_SELARTI_KEY").unwrap_or_else(|_| "demo-selarti-key".into());
    // Where Selarti's "All messages" integration posts: the demo's Selarti channel.
    let webhook = std::env::var("SIM_SELARTI_WEBHOOK").unwrap_or_else(|_| {
        "http://127.0.0.1:8081/selarti/demo-ai/demo-selarti-webhook-secret".into()
    });
    let selarti = SelartiSim::start(&selarti_addr, &selarti_key).await?;
    selarti.set_webhook_url(&webhook);
    selarti.set_think_time(Duration::from_millis(800));
    println!(
        "[sim] Selarti API on {} (its AI answers on {webhook})",
        selarti.api_base()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Stdin lines are the visitor's messages (`/pick <choice>` taps an offered choice,
/// `/leave` ends the chat and starts a new one); what the agent sends is printed.
async fn zendesk() -> anyhow::Result<()> {
    let addr = std::env::var("SIM_ZENDESK_ADDR").unwrap_or_else(|_| "127.0.0.1:9300".into());
    let token = std::env::var("SIM_ZENDESK_TOKEN").unwrap_or_else(|_| "demo-token".into());
    let sim = ZendeskSim::start(&addr, &token).await?;
    println!(
        "[sim] Zendesk Chat API on {} (token {token:?})",
        sim.graphql_url()
    );
    println!("[sim] waiting for the agent to go ONLINE and subscribe to messages");
    while !sim.wait_until_listening(Duration::from_secs(60)).await {}

    // Stdin is read on a plain thread: the runtime has no async stdin here.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let channel = sim.visitor_join("");
        println!("[visitor] joined; type a message, /pick <choice>, /leave, or Ctrl-D");
        let printer = tokio::spawn(print_agent(sim.clone(), channel.clone()));
        let left = loop {
            let Some(line) = lines.recv().await else {
                break false;
            };
            if line == "/leave" {
                break true;
            } else if let Some(choice) = line.strip_prefix("/pick ") {
                if let Err(e) = sim.visitor_picks(&channel, choice.trim()) {
                    println!("[sim] {e}");
                }
            } else if !line.is_empty() {
                sim.visitor_says(&channel, &line);
            }
        };
        sim.visitor_leaves(&channel);
        printer.abort();
        if !left {
            return Ok(());
        }
    }
}

async fn print_agent(sim: ZendeskSim, channel: String) {
    let mut shown = 0;
    loop {
        let sent = sim
            .wait_for_sent(&channel, shown + 1, Duration::from_secs(3600))
            .await;
        for message in &sent[shown..] {
            let text = message["msg"].as_str().unwrap_or_default();
            let choices: Vec<&str> = ["quick_replies", "buttons", "options"]
                .iter()
                .flat_map(|key| message[key].as_array().into_iter().flatten())
                .filter_map(|c| c["text"].as_str().or_else(|| c.as_str()))
                .collect();
            if choices.is_empty() {
                println!("[agent] {text}");
            } else {
                println!("[agent] {text}  [{}]", choices.join(" | "));
            }
        }
        shown = sent.len();
    }
}

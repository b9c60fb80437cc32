//! Runs the simulated custom platform, the demo bot, Selarti's API with its scripted AI and
//! Zendesk Chat's Conversations API for the demo (`scripts/run`; `scripts/run --bot
//! selarti` makes Selarti the bot). Zendesk visitors are played with curl:
//! `POST :9301/visitors/<name>` with the text as the body; `DELETE` makes them leave.
//! The agents are played on the custom platform's desk page (`:9100/desk`), which answers
//! as the demo's outlet channel `desk` (`HANDOFF_SIM_DESK_*` say otherwise).
//!
//! `handoff-sim zendesk` instead runs only the Zendesk Chat simulator, with one visitor
//! typing in this terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use handoff_simulators::{CustomPlatform, DemoBot, DeskIdentity, SelartiSim, ZendeskSim};

/// What `handoff-sim --help` says.
const USAGE: &str = "handoff-sim: the simulated platforms of the Handoff demo (scripts/run)

Usage: handoff-sim            the custom platform (:9100, the agents' desk page on
                              :9100/desk), the demo bot (:9200), Selarti's API (:9400) and
                              Zendesk Chat (:9300, visitors on :9301)
       handoff-sim zendesk    only Zendesk Chat, with one visitor typing in this terminal
       handoff-sim --help | --version

Environment: SIM_PLATFORM_ADDR, SIM_BOT_ADDR, SIM_SELARTI_ADDR, SIM_SELARTI_KEY,
SIM_SELARTI_WEBHOOK, SIM_ZENDESK_ADDR, SIM_ZENDESK_TOKEN, SIM_VISITORS_ADDR (see the
source's defaults, which match scripts/run and deploy/channels.local*.yaml).
The desk page answers through HANDOFF_SIM_DESK_HUB (the outlet-gateway,
http://127.0.0.1:8081) as HANDOFF_SIM_DESK_ORG (demo), HANDOFF_SIM_DESK_CHANNEL (desk)
with HANDOFF_SIM_DESK_TOKEN (demo-desk-token).
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("zendesk") => return zendesk().await,
        Some("--help" | "-h") => {
            print!("{USAGE}");
            return Ok(());
        }
        Some("--version" | "-V") => {
            println!("handoff-sim {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => anyhow::bail!("unexpected argument `{other}`\n\n{USAGE}"),
    }
    let platform_addr =
        std::env::var("SIM_PLATFORM_ADDR").unwrap_or_else(|_| "127.0.0.1:9100".into());
    let bot_addr = std::env::var("SIM_BOT_ADDR").unwrap_or_else(|_| "127.0.0.1:9200".into());
    let platform = CustomPlatform::start(&platform_addr, true).await?;
    let bot = DemoBot::start(&bot_addr, true).await?;
    // The desk page answers as the demo's outlet channel (deploy/channels.local.yaml).
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let desk = DeskIdentity {
        hub: env("HANDOFF_SIM_DESK_HUB", "http://127.0.0.1:8081"),
        org: env("HANDOFF_SIM_DESK_ORG", "demo"),
        channel: env("HANDOFF_SIM_DESK_CHANNEL", "desk"),
        token: env("HANDOFF_SIM_DESK_TOKEN", "demo-desk-token"),
    };
    println!(
        "[sim] custom platform on {} (Send API /send, Livechat API /livechat, Relay API /relay)",
        platform.url("")
    );
    println!(
        "[sim] desk: {} (the agents' desk page, answering as {}/{} through {})",
        platform.url("/desk"),
        desk.org,
        desk.channel,
        desk.hub
    );
    platform.set_desk(desk);
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
    let zendesk_addr =
        std::env::var("SIM_ZENDESK_ADDR").unwrap_or_else(|_| "127.0.0.1:9300".into());
    let zendesk_token =
        std::env::var("SIM_ZENDESK_TOKEN").unwrap_or_else(|_| "demo-zendesk-token".into());
    let zendesk = ZendeskSim::start(&zendesk_addr, &zendesk_token).await?;
    let visitors_addr =
        std::env::var("SIM_VISITORS_ADDR").unwrap_or_else(|_| "127.0.0.1:9301".into());
    let visitors = handoff_simulators::listen(&visitors_addr).await?;
    println!(
        "[sim] Zendesk Chat API on {} (visitors: POST http://{visitors_addr}/visitors/<name>)",
        zendesk.graphql_url()
    );
    let app = axum::Router::new()
        .route(
            "/visitors/{name}",
            post(visitor_says).delete(visitor_leaves),
        )
        .with_state(Visitors {
            sim: zendesk,
            chats: Arc::default(),
        });
    tokio::spawn(async move { axum::serve(visitors, app).await });
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The demo's Zendesk visitors by name, each with their open chat.
#[derive(Clone)]
struct Visitors {
    sim: ZendeskSim,
    chats: Arc<Mutex<HashMap<String, String>>>,
}

/// A visitor writes (joining first if they have no open chat); what the agent sends into
/// their chat is printed.
async fn visitor_says(
    State(v): State<Visitors>,
    Path(name): Path<String>,
    text: String,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let text = text.trim();
    if text.is_empty() {
        let error = serde_json::json!({"error": "the body is the visitor's text, and it is empty"});
        return (StatusCode::BAD_REQUEST, axum::Json(error));
    }
    let chat = {
        let mut chats = v.chats.lock().expect("visitors lock");
        chats
            .entry(name.clone())
            .or_insert_with(|| {
                let chat = v.sim.visitor_join(&name);
                let label = format!("[zendesk {name}]");
                tokio::spawn(print_agent_to(v.sim.clone(), chat.clone(), label));
                chat
            })
            .clone()
    };
    println!("[zendesk {name}] -> {text}");
    v.sim.visitor_says(&chat, text);
    let said = serde_json::json!({"visitor": name, "chat": chat});
    (StatusCode::ACCEPTED, axum::Json(said))
}

async fn visitor_leaves(State(v): State<Visitors>, Path(name): Path<String>) -> StatusCode {
    let chat = v.chats.lock().expect("visitors lock").remove(&name);
    match chat {
        Some(chat) => {
            v.sim.visitor_leaves(&chat);
            println!("[zendesk {name}] left");
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// Prints what the agent sends into `chat`, and its transfer, each line after `label`.
async fn print_agent_to(sim: ZendeskSim, chat: String, label: String) {
    let (mut shown, mut transferred) = (0, false);
    loop {
        let sent = sim.sent_to(&chat);
        for message in &sent[shown..] {
            println!("{label} <- {}", describe(message));
        }
        shown = sent.len();
        if !transferred
            && let Some((_, department)) = sim.transfers().into_iter().find(|(c, _)| *c == chat)
        {
            println!("{label} transferred to department {department}");
            transferred = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the visitor sees of a message the agent sent: its text, and its choices if any.
fn describe(message: &serde_json::Value) -> String {
    let text = message["msg"].as_str().unwrap_or_default();
    let choices: Vec<&str> = ["quick_replies", "buttons", "options"]
        .iter()
        .flat_map(|key| message[key].as_array().into_iter().flatten())
        .filter_map(|c| c["text"].as_str().or_else(|| c.as_str()))
        .collect();
    if choices.is_empty() {
        text.to_string()
    } else {
        format!("{text}  [{}]", choices.join(" | "))
    }
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
        let printer = tokio::spawn(print_agent_to(
            sim.clone(),
            channel.clone(),
            "[agent]".into(),
        ));
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

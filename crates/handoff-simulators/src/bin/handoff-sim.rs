//! Runs the simulated custom platform and the demo bot for the demo (`scripts/run`).

use handoff_simulators::{CustomPlatform, DemoBot};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    tokio::signal::ctrl_c().await?;
    Ok(())
}

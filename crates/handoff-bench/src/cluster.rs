//! The system under test: Postgres database, NATS prefix, the simulators in this process
//! and the services as child processes that can be killed (SIGKILL) and restarted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use handoff_simulators::{CustomPlatform, DemoBot, SelartiSim};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::process::{Child, Command};

pub const ORG: &str = "bench";
pub const INLET: &str = "web";
pub const INLET_TOKEN: &str = "bench-inlet-token";
/// The web chat (`handoff-bench visitors`).
pub const WEBCHAT: &str = "chat";
/// An inlet whose bot is Selarti's AI (simulated), answering on its webhook.
pub const AI_INLET: &str = "ai-web";
const AI_BOT: &str = "bench-ai";
const AI_SECRET: &str = "bench-ai-webhook-secret";
const AI_KEY: &str = "bench-ai-key";

pub const SERVICES: [&str; 3] = ["router", "inlet-gateway", "outlet-gateway"];

pub struct Cluster {
    pub db_url: String,
    pub nats_url: String,
    /// Copies of each stream and bucket (the NATS cluster's size).
    replicas_per_stream: usize,
    pub prefix: String,
    pub customer: CustomPlatform,
    pub bot: DemoBot,
    pub selarti: SelartiSim,
    channels: PathBuf,
    bin_dir: PathBuf,
    admin_url: String,
    db_name: String,
    /// Running replicas per service: (port, process).
    pub replicas: HashMap<&'static str, Vec<(u16, Child)>>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// On the machine's Postgres and NATS (or `HANDOFF_TEST_DATABASE_URL` /
    /// `HANDOFF_TEST_NATS_URL`).
    pub async fn start(bin_dir: PathBuf) -> anyhow::Result<Self> {
        let admin_url = std::env::var("HANDOFF_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let nats_url = std::env::var("HANDOFF_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        Self::start_on(bin_dir, admin_url, nats_url, 1).await
    }

    /// On the given servers; streams and buckets keep `replicas` copies (a NATS cluster).
    pub async fn start_on(
        bin_dir: PathBuf,
        admin_url: String,
        nats_url: String,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("handoff_bench_{id}");
        let mut admin = PgConnection::connect(&admin_url).await?;
        admin
            .execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        let db_url = format!("{base}/{db_name}");
        let customer = CustomPlatform::start("127.0.0.1:0", false).await?;
        let bot = DemoBot::start("127.0.0.1:0", false).await?;
        bot.stop_recording();
        let selarti = SelartiSim::start("127.0.0.1:0", AI_KEY).await?;
        let channels = std::env::temp_dir().join(format!("handoff-bench-{id}.yaml"));
        std::fs::write(
            &channels,
            format!(
                r#"
channels:
  - id: {INLET}
    org: {ORG}
    platform: custom
    role: inlet
    accessToken: {INLET_TOKEN}
    info:
      sendResponseApi: {send}
    bot: bench-bot
  - id: {WEBCHAT}
    org: {ORG}
    platform: webchat
    role: inlet
    secret: bench-webchat-secret-0123456789
    info: {{ messagesPerMinute: 600 }}
    bot: bench-bot
  - id: bench-bot
    org: {ORG}
    platform: webhook-bot
    role: bot
    accessToken: bench-bot-token
    info:
      url: {bot}
  - id: {AI_INLET}
    org: {ORG}
    platform: custom
    role: inlet
    accessToken: {INLET_TOKEN}
    info:
      sendResponseApi: {send}
    bot: {AI_BOT}
  - id: {AI_BOT}
    org: {ORG}
    platform: selarti
    role: bot
    accessToken: {AI_SECRET}
    apiKey: {AI_KEY}
    info:
      apiBase: {ai}
      taskId: bench-task
"#,
                send = customer.url("/send"),
                bot = bot.url(),
                ai = selarti.api_base(),
            ),
        )?;
        Ok(Self {
            prefix: format!("bench{id}"),
            db_url,
            nats_url,
            replicas_per_stream: replicas,
            customer,
            bot,
            selarti,
            channels,
            bin_dir,
            admin_url,
            db_name,
            replicas: HashMap::new(),
        })
    }

    /// Starts one more replica of `service` and waits until it is ready.
    pub async fn spawn(&mut self, service: &'static str) -> anyhow::Result<u16> {
        let port = free_port()?;
        let child = Command::new(self.bin_dir.join(service))
            .env("HANDOFF_CHANNELS", &self.channels)
            .env("HANDOFF_HTTP__HOST", "127.0.0.1")
            .env("HANDOFF_HTTP__PORT", port.to_string())
            // Several replicas on one machine: the ops port cannot be the default port + 100.
            .env("HANDOFF_HTTP__OPS_PORT", free_port()?.to_string())
            .env("HANDOFF_NATS__URL", &self.nats_url)
            .env("HANDOFF_NATS__PREFIX", &self.prefix)
            .env(
                "HANDOFF_NATS__REPLICAS",
                self.replicas_per_stream.to_string(),
            )
            .env("HANDOFF_DATABASE__URL", &self.db_url)
            .env("HANDOFF_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
            .env("HANDOFF_TELEMETRY__LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "error".into()),
            )
            // `BENCH_LOG_DIR` keeps each replica's log (with `BENCH_SERVICE_LOG` as its filter).
            .stdout(match std::env::var_os("BENCH_LOG_DIR") {
                Some(dir) => Stdio::from(std::fs::File::create(
                    PathBuf::from(dir).join(format!("{service}-{port}.log")),
                )?),
                None => Stdio::null(),
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {service}: {e} (build with --release)"))?;
        self.replicas
            .entry(service)
            .or_default()
            .push((port, child));
        if service == "outlet-gateway" {
            // Selarti's "All messages" integration posts to the outlet-gateway.
            self.selarti.set_webhook_url(&format!(
                "http://127.0.0.1:{port}/selarti/{AI_BOT}/{AI_SECRET}"
            ));
        }
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(port);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{service} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs replica `index` of `service`: no shutdown, no ack, no lease given back.
    pub async fn kill(&mut self, service: &'static str, index: usize) -> anyhow::Result<()> {
        let replicas = self.replicas.get_mut(service).expect("service started");
        let (_, mut child) = replicas.remove(index);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// The process id of `service`'s first replica.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.replicas.get(service)?.first()?.1.id()
    }

    /// Base URLs of the running inlet-gateway replicas.
    pub fn inlets(&self) -> Vec<String> {
        self.replicas
            .get("inlet-gateway")
            .map(|r| {
                r.iter()
                    .map(|(p, _)| format!("http://127.0.0.1:{p}"))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        for (_, replicas) in self.replicas.drain() {
            for (_, mut child) in replicas {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        let first = self.nats_url.split(',').next().unwrap_or_default();
        if let Ok(client) = async_nats::connect(first).await {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(self.prefix.to_uppercase()).await;
            let _ = js
                .delete_stream(handoff_bus::commands_stream(&self.prefix))
                .await;
            let _ = js
                .delete_stream(handoff_bus::hold_stream(&self.prefix))
                .await;
            let _ = js
                .delete_stream(handoff_bus::mailbox::mailbox_stream(&self.prefix))
                .await;
            let _ = js
                .delete_key_value(handoff_bus::lease_bucket(&self.prefix))
                .await;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name).as_str(),
                )
                .await;
        }
        let _ = std::fs::remove_file(&self.channels);
    }
}

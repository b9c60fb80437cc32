use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use handoff_config::{Channels, Settings};
use handoff_simulators::{
    Api, CustomPlatform, DemoBot, Recorded, SelartiSim, WebhookClient, ZendeskSim,
};
use serde_json::Value;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ORG: &str = "acme";
pub const INLET: &str = "web";
pub const INLET_TOKEN: &str = "inlet-token-123";
pub const OUTLET: &str = "desk";
/// A second outlet of the same org (another team), on the same simulated desk: its calls
/// carry `channel.info.team: b`.
pub const SECOND_OUTLET: &str = "desk-b";
pub const OUTLET_TOKEN: &str = "desk-token-456";
pub const INLET_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const CATALOG_KEY: &str = "catalog-key-for-tests";
pub const WAIT: Duration = Duration::from_secs(20);
/// The org's web chat (`platform: webchat`), served by the inlet-gateway.
pub const WEBCHAT: &str = "chat";
pub const WEBCHAT_ORIGIN: &str = "https://shop.example.com";
/// An inlet whose members talk to Selarti's AI (simulated) and are handed to `desk`.
pub const AI_INLET: &str = "ai-web";
pub const AI_INLET_TOKEN: &str = "ai-inlet-token-1";
pub const SELARTI: &str = "selarti-ai";
pub const SELARTI_SECRET: &str = "selarti-webhook-secret-0123456789";
pub const SELARTI_KEY: &str = "selarti-api-key-42";
/// A Zendesk Chat account (simulated) served by zendesk-agent, with the demo bot.
pub const ZENDESK: &str = "zd-chat";
pub const ZENDESK_TOKEN: &str = "zendesk-oauth-token-7";
/// Another tenant: org `globex`, with its own inlet, bot and desk (on the same simulators,
/// told apart by channel), to prove what `acme`'s channels cannot reach.
pub const OTHER_ORG: &str = "globex";
pub const OTHER_INLET: &str = "globex-web";
pub const OTHER_INLET_TOKEN: &str = "globex-inlet-token";
pub const OTHER_OUTLET: &str = "globex-desk";
pub const OTHER_OUTLET_TOKEN: &str = "globex-desk-token";

fn admin_url() -> String {
    std::env::var("HANDOFF_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn nats_url() -> String {
    std::env::var("HANDOFF_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// How the hub under test is put together.
#[derive(Clone)]
pub struct HubOptions {
    /// Run the router as a separate OS process (so a test can kill it).
    pub router_process: bool,
    /// Start the router at all.
    pub router: bool,
    pub pending_timeout_secs: u64,
    pub live_idle_timeout_secs: u64,
    /// JetStream's redelivery timeout; failover must not depend on it.
    pub ack_wait_secs: u64,
    /// Outbound attempts per delivery, and the backoff between them.
    pub delivery_attempts: usize,
    pub backoff_ms: (u64, u64),
    /// How long deliveries (and Livechat API requests) are retried through an outage.
    pub retry_horizon_secs: u64,
    pub handoff_horizon_secs: u64,
    /// JetStream's duplicate window: how long a body without an id is recognised.
    pub duplicate_window_secs: u64,
    /// Run a zendesk-agent in this process (a test may start its own processes instead).
    pub zendesk_agent: bool,
    /// Hand the Zendesk inlet's members to this Zendesk department instead of the desk.
    pub zendesk_department: Option<&'static str>,
    /// Run router, inlet-gateway and outlet-gateway as OS processes exporting their traces
    /// over OTLP/HTTP to this endpoint (each process has its own tracer and service name).
    pub otlp_endpoint: Option<String>,
    /// Run router, inlet-gateway and outlet-gateway as OS processes logging everything
    /// (`trace`, JSON) into this sink: each process's logs are its own, which a subscriber
    /// in this shared test process cannot promise.
    pub service_logs: Option<ServiceLogs>,
    /// Share channels through the sealed catalog (`HANDOFF_CATALOG_KEY`); without it every
    /// service runs on the channels file alone.
    pub shared_catalog: bool,
    /// Point `desk`'s Livechat and Relay APIs at a port nobody listens on, with this
    /// token in their query strings (as some desks authenticate).
    pub unreachable_desk_token: Option<&'static str>,
    /// A NATS server of the test's own (one it may restart) instead of the shared one.
    pub nats_url: Option<String>,
    /// The events stream's size limit.
    pub stream_max_bytes: i64,
    /// Partitions, each partition's acknowledgement window, and how long a failing
    /// delivery waits in place before its member's messages move to the hold stream.
    pub partitions: u16,
    pub max_ack_pending: i64,
    pub hold_after_secs: u64,
    /// Bytes each service process holds in its lanes at most.
    pub max_held_bytes: usize,
    /// How long the router may try events without applying one before it is not ready.
    pub stalled_after_secs: u64,
    /// The inlets' `notices` (YAML). The default silences those the tests written before
    /// notices do not count; `None` leaves every notice at its default text.
    pub notices: Option<&'static str>,
    /// More of the main inlet's `handoff` rules, as YAML flow entries
    /// (`"botDownSecs: 2, onBotDown: handoff"`).
    pub inlet_handoff: &'static str,
    /// The main inlet's `csat` (YAML), when it asks one.
    pub csat: Option<&'static str>,
    /// The demo bot's `coalesceMs`.
    pub coalesce_ms: u64,
    /// More of the desk's `liveChat` rules, as YAML flow entries.
    pub outlet_live_chat: &'static str,
    /// The desk's business `hours` (YAML).
    pub desk_hours: Option<String>,
    /// The org has a lifecycle subscriber (`crm`), posting to the other org's simulated
    /// platform's Relay API (which nothing else uses), signed with `INLET_SECRET`.
    pub subscriber: bool,
}

/// The notices that tests written before them do not expect (the end text they do).
pub const QUIET: &str = "{handoffRequested: ~, queued: ~, agentJoined: ~, unavailable: ~}";

/// Every line the service processes wrote, as they wrote it.
pub type ServiceLogs = Arc<std::sync::Mutex<Vec<String>>>;

impl HubOptions {
    fn processes(&self) -> bool {
        self.otlp_endpoint.is_some() || self.service_logs.is_some()
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            router_process: false,
            router: true,
            pending_timeout_secs: 300,
            live_idle_timeout_secs: 86_400,
            ack_wait_secs: 3,
            delivery_attempts: 3,
            backoff_ms: (20, 100),
            retry_horizon_secs: 2,
            handoff_horizon_secs: 2,
            duplicate_window_secs: 120,
            zendesk_agent: true,
            zendesk_department: None,
            otlp_endpoint: None,
            service_logs: None,
            shared_catalog: true,
            unreachable_desk_token: None,
            nats_url: None,
            stream_max_bytes: 64 * 1024 * 1024,
            partitions: 4,
            max_ack_pending: 4_096,
            hold_after_secs: 10,
            max_held_bytes: 256 * 1024 * 1024,
            stalled_after_secs: 30,
            notices: Some(QUIET),
            inlet_handoff: "",
            csat: None,
            coalesce_ms: 0,
            outlet_live_chat: "",
            desk_hours: None,
            subscriber: false,
        }
    }
}

enum RouterHandle {
    InProcess(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    Process(tokio::process::Child),
}

pub struct TestHub {
    pub settings: Settings,
    pub inlet: WebhookClient,
    /// The inlet-gateway's root URL (the web chat lives there).
    pub inlet_url: String,
    pub outlet: WebhookClient,
    /// The outlet-gateway's root URL.
    pub outlet_url: String,
    /// The customer's web chat (inlet Send API).
    pub customer: CustomPlatform,
    /// The other org's web chat: a platform of its own, as another tenant's would be.
    pub other_customer: CustomPlatform,
    /// The live-chat system (outlet Livechat / Relay / Send APIs).
    pub desk: CustomPlatform,
    pub bot: DemoBot,
    pub selarti: SelartiSim,
    pub zendesk: ZendeskSim,
    pub router_url: Option<String>,
    /// Each service's ops port (`/metrics`, `/readyz` with its reasons).
    pub router_ops: Option<String>,
    pub inlet_ops: String,
    pub outlet_ops: String,
    /// The router's admin API (gRPC), where `handoffctl` goes.
    pub admin_url: Option<String>,
    channels_path: PathBuf,
    db_name: String,
    gateways: CancellationToken,
    router: Option<RouterHandle>,
    /// Extra replicas started by a test, each stoppable on its own.
    replicas: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    /// Services run as OS processes (killed when the hub is dropped).
    processes: Vec<tokio::process::Child>,
    options: HubOptions,
}

#[allow(clippy::too_many_arguments)]
fn channels_yaml(
    customer: &CustomPlatform,
    other_customer: &CustomPlatform,
    desk: &CustomPlatform,
    bot: &DemoBot,
    selarti: &SelartiSim,
    zendesk: &ZendeskSim,
    o: &HubOptions,
) -> String {
    format!(
        r#"
channels:
  - id: {INLET}
    org: {ORG}
    platform: custom
    role: inlet
    accessToken: {INLET_TOKEN}
    secret: {INLET_SECRET}
    info:
      sendResponseApi: {send}
      theme: blue
    bot: demo-bot
    outlet: {OUTLET}
    handoff:
      keywords: ["talk to a human"]
      postbacks: ["LIVE_CHAT"]
      pendingTimeoutSecs: {pending}
      liveIdleTimeoutSecs: {idle}
{inlet_handoff}
{notices}
{csat}
  - id: demo-bot
    org: {ORG}
    platform: webhook-bot
    role: bot
    coalesceMs: {coalesce}
    accessToken: bot-token-789
    info:
      url: {bot}
  - id: {AI_INLET}
    org: {ORG}
    platform: custom
    role: inlet
    accessToken: {AI_INLET_TOKEN}
    info:
      sendResponseApi: {send}
    bot: {SELARTI}
    outlet: {OUTLET}
{notices}
  - id: {SELARTI}
    org: {ORG}
    platform: selarti
    role: bot
    accessToken: {SELARTI_SECRET}
    apiKey: {SELARTI_KEY}
    info:
      apiBase: {selarti_base}
      taskId: task-1
  - id: {ZENDESK}
    org: {ORG}
    platform: zendesk
    role: inlet
    apiKey: {ZENDESK_TOKEN}
    info:
      endpoint: {zendesk_endpoint}
{zendesk_handoff}
    bot: demo-bot
    handoff:
      keywords: ["talk to a human"]
{notices}
  - id: {OUTLET}
    org: {ORG}
    platform: custom
    role: outlet
    accessToken: {OUTLET_TOKEN}
    info:
      livechatApi: {livechat}
      relayResponseApi: {relay}
      sendResponseApi: {desk_send}
    liveChat:
      endCommand: done
      endText: The agent has left. The assistant is back.
{outlet_live_chat}
{desk_hours}
  - id: {SECOND_OUTLET}
    org: {ORG}
    platform: custom
    role: outlet
    accessToken: desk-b-token-789
    info:
      livechatApi: {livechat}
      relayResponseApi: {relay}
      sendResponseApi: {desk_send}
      team: b
{subscriber}
  - id: {WEBCHAT}
    org: {ORG}
    platform: webchat
    role: inlet
    secret: chat-secret-0123456789
    info: {{ allowedOrigins: ['{WEBCHAT_ORIGIN}'], messagesPerMinute: 9, maxMessageChars: 200 }}
    bot: demo-bot
    outlet: {OUTLET}
    handoff:
      keywords: ["talk to a human"]
{notices}
  - id: {OTHER_INLET}
    org: {OTHER_ORG}
    platform: custom
    role: inlet
    accessToken: {OTHER_INLET_TOKEN}
    info:
      sendResponseApi: {other_send}
    bot: globex-bot
    outlet: {OTHER_OUTLET}
    handoff:
      keywords: ["talk to a human"]
{notices}
  - id: globex-bot
    org: {OTHER_ORG}
    platform: webhook-bot
    role: bot
    accessToken: globex-bot-token
    info:
      url: {bot}
  - id: {OTHER_OUTLET}
    org: {OTHER_ORG}
    platform: custom
    role: outlet
    accessToken: {OTHER_OUTLET_TOKEN}
    info:
      livechatApi: {other_livechat}
      relayResponseApi: {other_relay}
      sendResponseApi: {desk_send}
"#,
        send = customer.url("/send"),
        other_send = other_customer.url("/send"),
        bot = bot.url(),
        selarti_base = selarti.api_base(),
        zendesk_endpoint = zendesk.graphql_url(),
        inlet_handoff = o
            .inlet_handoff
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| format!("      {entry}\n"))
            .collect::<String>(),
        coalesce = o.coalesce_ms,
        subscriber = if o.subscriber {
            format!(
                "  - id: crm\n    org: {ORG}\n    platform: webhook\n    role: subscriber\n    secret: {INLET_SECRET}\n    info: {{ url: '{}' }}\n",
                other_customer.url("/relay")
            )
        } else {
            String::new()
        },
        desk_hours = match &o.desk_hours {
            Some(hours) => format!("    hours: {hours}"),
            None => String::new(),
        },
        outlet_live_chat = o
            .outlet_live_chat
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| format!("      {entry}\n"))
            .collect::<String>(),
        csat = match o.csat {
            Some(csat) => format!("    csat: {csat}"),
            None => String::new(),
        },
        notices = match o.notices {
            Some(notices) => format!("    notices: {notices}"),
            None => String::new(),
        },
        zendesk_handoff = match o.zendesk_department {
            Some(department) => format!("      department: {department}"),
            None => format!("    outlet: {OUTLET}"),
        },
        livechat = match o.unreachable_desk_token {
            Some(token) => format!("http://127.0.0.1:9/livechat?accessToken={token}"),
            None => desk.url("/livechat"),
        },
        relay = match o.unreachable_desk_token {
            Some(token) => format!("http://127.0.0.1:9/relay?accessToken={token}"),
            None => desk.url("/relay"),
        },
        other_livechat = desk.url("/livechat"),
        other_relay = desk.url("/relay"),
        desk_send = desk.url("/send"),
        pending = o.pending_timeout_secs,
        idle = o.live_idle_timeout_secs,
    )
}

impl TestHub {
    pub async fn start() -> Self {
        Self::start_with(HubOptions::default()).await
    }

    pub async fn start_with(options: HubOptions) -> Self {
        // `RUST_LOG=debug cargo test …` shows the services' logs for a failing test.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("handoff_test_{id}");
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("Postgres is reachable");
        admin
            .execute(format!(r#"CREATE DATABASE "{db_name}""#).as_str())
            .await
            .expect("create test database");
        let db_url = {
            let mut url = url_without_db(&admin_url());
            url.push('/');
            url.push_str(&db_name);
            url
        };

        let customer = CustomPlatform::start("127.0.0.1:0", false).await.unwrap();
        let other_customer = CustomPlatform::start("127.0.0.1:0", false).await.unwrap();
        let desk = CustomPlatform::start("127.0.0.1:0", false).await.unwrap();
        let bot = DemoBot::start("127.0.0.1:0", false).await.unwrap();
        let selarti = SelartiSim::start("127.0.0.1:0", SELARTI_KEY).await.unwrap();
        let zendesk = ZendeskSim::start("127.0.0.1:0", ZENDESK_TOKEN)
            .await
            .unwrap();
        let yaml = channels_yaml(
            &customer,
            &other_customer,
            &desk,
            &bot,
            &selarti,
            &zendesk,
            &options,
        );
        let channels_path = std::env::temp_dir().join(format!("handoff-channels-{id}.yaml"));
        std::fs::write(&channels_path, &yaml).unwrap();

        let defaults = Settings::default();
        let settings = Settings {
            channels: channels_path.clone(),
            http: handoff_config::HttpSettings {
                host: "127.0.0.1".into(),
                port: Some(0),
                ops_port: Some(0),
                ..defaults.http
            },
            nats: handoff_config::NatsSettings {
                url: options.nats_url.clone().unwrap_or_else(nats_url),
                prefix: format!("t{id}"),
                partitions: options.partitions,
                max_ack_pending: options.max_ack_pending,
                hold_after_secs: options.hold_after_secs,
                max_held_bytes: options.max_held_bytes,
                ack_wait_secs: options.ack_wait_secs,
                duplicate_window_secs: options.duplicate_window_secs,
                stream_max_bytes: options.stream_max_bytes,
                commands_max_bytes: 64 * 1024 * 1024,
                ..defaults.nats
            },
            database: handoff_config::DatabaseSettings {
                url: db_url.into(),
                max_connections: 5,
                stalled_after_secs: options.stalled_after_secs,
                ..defaults.database
            },
            delivery: handoff_config::DeliverySettings {
                max_attempts: options.delivery_attempts,
                initial_backoff_ms: options.backoff_ms.0,
                max_backoff_ms: options.backoff_ms.1,
                timeout_ms: 2_000,
                retry_horizon_secs: options.retry_horizon_secs,
                handoff_horizon_secs: options.handoff_horizon_secs,
                allow_private_targets: true,
                ..defaults.delivery
            },
            admin: handoff_config::AdminSettings {
                host: "127.0.0.1".into(),
                port: 0,
                token: Some(ADMIN_TOKEN.to_string().into()),
                url: String::new(),
            },
            catalog_key: options
                .shared_catalog
                .then(|| CATALOG_KEY.to_string().into()),
            sweep_interval_ms: 200,
            ..defaults
        };

        let gateways = CancellationToken::new();
        let channels = Channels::parse(&yaml).unwrap();
        let mut options = options;
        let mut processes = Vec::new();
        if options.processes() {
            options.router_process = true;
            options.zendesk_agent = false;
        }
        let (inlet_url, outlet_url) = if options.processes() {
            let (inlet, inlet_port, inlet_ops) =
                spawn_service(&settings, &options, "inlet-gateway").await;
            let (outlet, outlet_port, outlet_ops) =
                spawn_service(&settings, &options, "outlet-gateway").await;
            processes.extend([inlet, outlet]);
            ((inlet_port, inlet_ops), (outlet_port, outlet_ops))
        } else {
            let inlet = inlet_gateway::Application::build(&settings, channels.clone())
                .await
                .expect("inlet-gateway starts");
            let inlet_ports = (inlet.port(), inlet.ops_port());
            tokio::spawn(inlet.run_until_stopped(gateways.clone()));
            let outlet = outlet_gateway::Application::build(&settings, channels.clone())
                .await
                .expect("outlet-gateway starts");
            let outlet_ports = (outlet.port(), outlet.ops_port());
            tokio::spawn(outlet.run_until_stopped(gateways.clone()));
            (inlet_ports, outlet_ports)
        };
        let local = |port: u16| format!("http://127.0.0.1:{port}");
        let (inlet_url, inlet_ops) = (local(inlet_url.0), local(inlet_url.1));
        let (outlet_url, outlet_ops) = (local(outlet_url.0), local(outlet_url.1));
        if options.zendesk_agent {
            let agent = zendesk_agent::Application::build(&settings, channels.clone())
                .await
                .expect("zendesk-agent starts");
            tokio::spawn(agent.run_until_stopped(gateways.clone()));
        }
        selarti.set_webhook_url(&format!("{outlet_url}/selarti/{SELARTI}/{SELARTI_SECRET}"));

        let mut hub = Self {
            settings,
            inlet: WebhookClient::new(inlet_url.clone()),
            inlet_url,
            outlet: WebhookClient::new(outlet_url.clone()),
            outlet_url,
            inlet_ops,
            outlet_ops,
            customer,
            other_customer,
            desk,
            bot,
            selarti,
            zendesk,
            router_url: None,
            router_ops: None,
            admin_url: None,
            channels_path,
            db_name,
            gateways,
            router: None,
            replicas: Vec::new(),
            processes,
            options: options.clone(),
        };
        if options.router {
            hub.start_router().await;
        }
        hub
    }

    pub async fn start_router(&mut self) {
        assert!(self.router.is_none(), "router already running");
        if self.options.router_process {
            let (mut child, port, ops) =
                spawn_service(&self.settings, &self.options, "router").await;
            self.router_url = Some(format!("http://127.0.0.1:{port}"));
            self.router_ops = Some(format!("http://127.0.0.1:{ops}"));
            // Ready once it has migrated and subscribed: its look-up service answers.
            let client = async_nats::connect(&self.settings.nats.url).await.unwrap();
            let subject = router::lookup_subject(&self.settings.nats.prefix);
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Ok(Ok(_)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.request(subject.clone(), "{}".into()),
                )
                .await
                {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "router process never became ready"
                );
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("router process exited: {status}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.router = Some(RouterHandle::Process(child));
        } else {
            let channels = Channels::load(&self.channels_path).unwrap();
            let app = router::Application::build(&self.settings, channels)
                .await
                .expect("router starts");
            self.router_url = Some(format!("http://127.0.0.1:{}", app.port()));
            self.router_ops = Some(format!("http://127.0.0.1:{}", app.ops_port()));
            self.admin_url = app
                .admin_port()
                .map(|port| format!("http://127.0.0.1:{port}"));
            let token = CancellationToken::new();
            let task = tokio::spawn(app.run_until_stopped(token.clone()));
            self.router = Some(RouterHandle::InProcess(token, task));
        }
    }

    /// Starts one more router in this process; returns its index for `stop_replica`.
    pub async fn add_router_replica(&mut self) -> usize {
        let channels = Channels::load(&self.channels_path).unwrap();
        let app = router::Application::build(&self.settings, channels)
            .await
            .expect("router replica starts");
        self.keep_replica(|stop| app.run_until_stopped(stop))
    }

    /// Starts one more inlet-gateway in this process; returns its index for `stop_replica`.
    pub async fn add_inlet_replica(&mut self) -> usize {
        self.add_inlet_replica_at().await.0
    }

    /// [`Self::add_inlet_replica`], with the replica's root URL.
    pub async fn add_inlet_replica_at(&mut self) -> (usize, String) {
        let channels = Channels::load(&self.channels_path).unwrap();
        let app = inlet_gateway::Application::build(&self.settings, channels)
            .await
            .expect("inlet-gateway replica starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        (self.keep_replica(|stop| app.run_until_stopped(stop)), url)
    }

    /// Starts one more outlet-gateway in this process; returns its index for `stop_replica`.
    pub async fn add_outlet_replica(&mut self) -> usize {
        let channels = Channels::load(&self.channels_path).unwrap();
        let app = outlet_gateway::Application::build(&self.settings, channels)
            .await
            .expect("outlet-gateway replica starts");
        self.keep_replica(|stop| app.run_until_stopped(stop))
    }

    fn keep_replica<F>(&mut self, run: impl FnOnce(CancellationToken) -> F) -> usize
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        self.replicas.push((stop, task));
        self.replicas.len() - 1
    }

    /// Stops a replica the way an orchestrator does (SIGTERM): it finishes what it holds.
    pub async fn stop_replica(&mut self, index: usize) {
        let (token, task) = &mut self.replicas[index];
        token.cancel();
        let _ = task.await;
    }

    /// Ends the router abruptly: SIGKILL for a process (no ack, no cleanup).
    pub async fn kill_router(&mut self) {
        match self.router.take() {
            Some(RouterHandle::Process(mut child)) => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
            }
            Some(RouterHandle::InProcess(token, task)) => {
                token.cancel();
                task.abort();
                let _ = task.await;
            }
            None => {}
        }
    }

    /// Starts one more router as a process (beside the hub's own), returned once it listens.
    pub async fn spawn_router(&self, env: &[(&str, &str)]) -> tokio::process::Child {
        spawn_service_with(&self.settings, &self.options, "router", env)
            .await
            .0
    }

    /// Starts an inlet-gateway process on `port` (to be killed and started again on the
    /// same port, as a browser reconnects to the same address); returns once it listens.
    pub async fn spawn_inlet_gateway(&self, port: u16) -> tokio::process::Child {
        let port = port.to_string();
        spawn_service_with(
            &self.settings,
            &self.options,
            "inlet-gateway",
            &[("HANDOFF_HTTP__PORT", &port)],
        )
        .await
        .0
    }

    /// Starts a zendesk-agent process and returns once it has connected and is about to
    /// take its accounts.
    pub async fn spawn_zendesk_agent(&self) -> tokio::process::Child {
        spawn_service(&self.settings, &self.options, "zendesk-agent")
            .await
            .0
    }

    /// The settings a service process (or handoffctl) needs to join this hub.
    fn service_env(&self) -> Vec<(&'static str, String)> {
        service_env(&self.settings, &self.options)
    }

    /// Runs `handoffctl` against this hub; returns its exit status and standard output.
    pub async fn handoffctl(&self, args: &[&str]) -> (bool, String) {
        // Its own package: found beside the router's binary (scripts/test builds it).
        let handoffctl =
            std::path::Path::new(env!("CARGO_BIN_EXE_router")).with_file_name("handoffctl");
        let out = tokio::process::Command::new(handoffctl)
            .args(args)
            .envs(self.service_env())
            .env(
                "HANDOFF_ADMIN__URL",
                self.admin_url
                    .as_deref()
                    .expect("the router's admin API runs"),
            )
            .output()
            .await
            .expect("handoffctl runs");
        if !out.status.success() {
            eprintln!("handoffctl: {}", String::from_utf8_lossy(&out.stderr));
        }
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Dead letters as `handoffctl dead-letters list --json` shows them, once there are `n`.
    pub async fn wait_dead_letters(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (ok, out) = self.handoffctl(&["dead-letters", "list", "--json"]).await;
            assert!(ok, "handoffctl dead-letters list failed");
            let answer: Value = serde_json::from_str(&out).expect("JSON");
            let letters: Vec<Value> = answer["deadLetters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if letters.len() >= n {
                return letters;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} dead letters, have {letters:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the member has a conversation in `state`; returns its external id.
    pub async fn wait_conversation_state(&self, member: Uuid, state: &str) -> Option<String> {
        let mut db = self.db().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found: Option<Option<String>> = sqlx::query_scalar(
                "SELECT external_id FROM conversations WHERE member_id = $1 AND state = $2",
            )
            .bind(member)
            .bind(state)
            .fetch_optional(&mut db)
            .await
            .unwrap();
            if let Some(external_id) = found {
                return external_id;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {state} conversation for member {member}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many system lines of `event` (`DELIVERY_FAILED`, …) the transcripts hold.
    pub async fn transcript_events(&self, event: &str) -> i64 {
        let mut db = self.db().await;
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE content->>'event' = $1")
            .bind(event)
            .fetch_one(&mut db)
            .await
            .unwrap()
    }

    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(secrecy::ExposeSecret::expose_secret(
            &self.settings.database.url,
        ))
        .await
        .unwrap()
    }

    pub async fn say(&self, external_id: &str, text: &str) -> (u16, Value) {
        let body = WebhookClient::customer_text(external_id, INLET, text, now_ms());
        self.inlet
            .post(INLET, ORG, INLET_TOKEN, &body, &[])
            .await
            .unwrap()
    }

    /// The desk's agent sends a command (`done`, `transfer …`) about live chat `ticket`.
    pub async fn desk_command(&self, ticket: &str, text: &str) -> (u16, Value) {
        let body = WebhookClient::agent_command(ticket, text, now_ms());
        self.outlet
            .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
            .await
            .unwrap()
    }

    /// A customer of the other org's inlet writes.
    pub async fn say_elsewhere(&self, external_id: &str, text: &str) -> (u16, Value) {
        let body = WebhookClient::customer_text(external_id, OTHER_INLET, text, now_ms());
        self.inlet
            .post(OTHER_INLET, OTHER_ORG, OTHER_INLET_TOKEN, &body, &[])
            .await
            .unwrap()
    }

    /// A customer of the Selarti inlet writes.
    pub async fn say_to_ai(&self, external_id: &str, text: &str) -> (u16, Value) {
        let body = WebhookClient::customer_text(external_id, AI_INLET, text, now_ms());
        self.inlet
            .post(AI_INLET, ORG, AI_INLET_TOKEN, &body, &[])
            .await
            .unwrap()
    }

    /// Send API calls the customer `external_id` received, in order.
    pub fn received(&self, external_id: &str) -> Vec<Recorded> {
        sends_to(&self.customer, external_id)
    }

    /// The texts the customer `external_id` received, each delivery once: a retry that got
    /// through after all comes again under the same `webhook-id`, which receivers drop.
    pub fn received_once(&self, external_id: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.received(external_id)
            .into_iter()
            .filter(|r| seen.insert(r.webhook_id.clone()))
            .map(|r| text_of(&r))
            .collect()
    }

    /// Send API calls the other org's customer `external_id` received, in order.
    pub fn received_elsewhere(&self, external_id: &str) -> Vec<Recorded> {
        sends_to(&self.other_customer, external_id)
    }

    /// Waits until the customer has received `n` responses.
    pub async fn wait_received(&self, external_id: &str, n: usize) -> Vec<Recorded> {
        wait_sends(&self.customer, external_id, n).await
    }

    /// Waits until the other org's customer has received `n` responses.
    pub async fn wait_received_elsewhere(&self, external_id: &str, n: usize) -> Vec<Recorded> {
        wait_sends(&self.other_customer, external_id, n).await
    }

    /// Waits for a bot request matching `pred`.
    pub async fn wait_bot(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(call) = self.bot.calls().into_iter().find(|c| pred(c)) {
                return call;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bot never got the expected call"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_desk(&self, api: Api, n: usize) -> Vec<Recorded> {
        self.desk.wait_for(api, n, WAIT).await
    }

    pub async fn shutdown(mut self) {
        self.kill_router().await;
        for mut process in self.processes.drain(..) {
            let _ = process.start_kill();
            let _ = process.wait().await;
        }
        for (token, _) in &self.replicas {
            token.cancel();
        }
        self.gateways.cancel();
        if let Ok(client) = async_nats::connect(&self.settings.nats.url).await {
            let js = async_nats::jetstream::new(client);
            let prefix = &self.settings.nats.prefix;
            let _ = js.delete_stream(prefix.to_uppercase()).await;
            let _ = js.delete_stream(handoff_bus::commands_stream(prefix)).await;
            let _ = js.delete_key_value(handoff_bus::lease_bucket(prefix)).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
            let _ = admin
                .execute(
                    format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name).as_str(),
                )
                .await;
        }
        let _ = std::fs::remove_file(&self.channels_path);
    }
}

/// The settings a service process (or handoffctl) needs to join the hub with `settings`.
fn service_env(settings: &Settings, options: &HubOptions) -> Vec<(&'static str, String)> {
    let nats = &settings.nats;
    let mut env = vec![
        ("HANDOFF_NATS__URL", nats.url.clone()),
        ("HANDOFF_SWEEP_INTERVAL_MS", "200".into()),
        ("HANDOFF_ADMIN__HOST", "127.0.0.1".into()),
        ("HANDOFF_ADMIN__PORT", "0".into()),
        ("HANDOFF_ADMIN__TOKEN", ADMIN_TOKEN.into()),
        ("HANDOFF_NATS__PREFIX", nats.prefix.clone()),
        ("HANDOFF_NATS__PARTITIONS", nats.partitions.to_string()),
        (
            "HANDOFF_NATS__ACK_WAIT_SECS",
            nats.ack_wait_secs.to_string(),
        ),
        (
            "HANDOFF_NATS__DUPLICATE_WINDOW_SECS",
            nats.duplicate_window_secs.to_string(),
        ),
        (
            "HANDOFF_NATS__STREAM_MAX_BYTES",
            nats.stream_max_bytes.to_string(),
        ),
        (
            "HANDOFF_NATS__COMMANDS_MAX_BYTES",
            nats.commands_max_bytes.to_string(),
        ),
        (
            "HANDOFF_NATS__MAX_ACK_PENDING",
            nats.max_ack_pending.to_string(),
        ),
        (
            "HANDOFF_NATS__HOLD_AFTER_SECS",
            nats.hold_after_secs.to_string(),
        ),
        (
            "HANDOFF_NATS__MAX_HELD_BYTES",
            nats.max_held_bytes.to_string(),
        ),
        (
            "HANDOFF_DATABASE__URL",
            secrecy::ExposeSecret::expose_secret(&settings.database.url).to_string(),
        ),
    ];
    let delivery = &settings.delivery;
    env.extend([
        (
            "HANDOFF_DELIVERY__ALLOW_PRIVATE_TARGETS",
            delivery.allow_private_targets.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__MAX_ATTEMPTS",
            delivery.max_attempts.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__INITIAL_BACKOFF_MS",
            delivery.initial_backoff_ms.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__MAX_BACKOFF_MS",
            delivery.max_backoff_ms.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__TIMEOUT_MS",
            delivery.timeout_ms.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__RETRY_HORIZON_SECS",
            delivery.retry_horizon_secs.to_string(),
        ),
        (
            "HANDOFF_DELIVERY__HANDOFF_HORIZON_SECS",
            delivery.handoff_horizon_secs.to_string(),
        ),
    ]);
    if options.shared_catalog {
        env.push(("HANDOFF_CATALOG_KEY", CATALOG_KEY.into()));
    }
    if let Some(endpoint) = &options.otlp_endpoint {
        env.push(("HANDOFF_TELEMETRY__OTLP_ENDPOINT", endpoint.clone()));
        // Export spans within a tenth of a second rather than the default five.
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
        env.push(("OTEL_METRIC_EXPORT_INTERVAL", "300".into()));
    }
    env
}

/// Starts service `name` (its binary, which `scripts/test` builds beside the router's) as
/// a process; returns it once it listens, with its port.
async fn spawn_service(
    settings: &Settings,
    options: &HubOptions,
    name: &str,
) -> (tokio::process::Child, u16, u16) {
    spawn_service_with(settings, options, name, &[]).await
}

/// `spawn_service`, with extra environment variables (over the hub's).
async fn spawn_service_with(
    settings: &Settings,
    options: &HubOptions,
    name: &str,
    extra_env: &[(&str, &str)],
) -> (tokio::process::Child, u16, u16) {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_router")).with_file_name(name);
    assert!(
        binary.exists(),
        "{} is missing: run scripts/test, or `cargo build --bins` first",
        binary.display()
    );
    let mut child = tokio::process::Command::new(binary)
        .env("HANDOFF_CHANNELS", &settings.channels)
        .env("HANDOFF_HTTP__HOST", "127.0.0.1")
        .env("HANDOFF_HTTP__PORT", "0")
        .env("HANDOFF_HTTP__OPS_PORT", "0")
        .envs(service_env(settings, options))
        .env("HANDOFF_TELEMETRY__LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            match options.service_logs {
                Some(_) => "trace,reqwest=info".to_string(),
                None => format!("warn,{}=info", name.replace('-', "_")),
            },
        )
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("the {name} binary starts: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (up, started) = tokio::sync::oneshot::channel();
    let name = name.to_string();
    let sink = options.service_logs.clone();
    tokio::spawn(async move {
        let mut up = Some(up);
        // Read on to the end: a full pipe would stall the process.
        while let Ok(Some(line)) = lines.next_line().await {
            match &sink {
                Some(sink) => sink.lock().unwrap().push(line.clone()),
                // Shown with a failing test's output.
                None => println!("[{name}] {line}"),
            }
            let Ok(log) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let fields = &log["fields"];
            if fields["message"] == format!("{name} listening")
                && let (Some(port), Some(ops), Some(up)) = (
                    fields["port"].as_u64(),
                    fields["ops_port"].as_u64(),
                    up.take(),
                )
            {
                let _ = up.send((port as u16, ops as u16));
            }
        }
    });
    let (port, ops) = tokio::time::timeout(WAIT, started)
        .await
        .expect("the service came up")
        .expect("the service came up");
    (child, port, ops)
}

fn sends_to(platform: &CustomPlatform, external_id: &str) -> Vec<Recorded> {
    platform
        .calls(Api::Send)
        .into_iter()
        .filter(|c| c.body["member"]["externalId"] == external_id)
        .collect()
}

/// Waits until `platform` has sent the customer `external_id` `n` responses (or `WAIT`).
async fn wait_sends(platform: &CustomPlatform, external_id: &str, n: usize) -> Vec<Recorded> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = sends_to(platform, external_id);
        if got.len() >= n || tokio::time::Instant::now() >= deadline {
            return got;
        }
        platform
            .wait_for(
                Api::Send,
                platform.calls(Api::Send).len() + 1,
                Duration::from_millis(200),
            )
            .await;
    }
}

fn url_without_db(url: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(i) => url[..scheme_end + i].to_string(),
        None => url.to_string(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn text_of(call: &Recorded) -> String {
    call.body["response"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn member_id(external_id: &str) -> String {
    handoff_config::member_id(INLET, external_id).to_string()
}

/// The member id of a customer of the other org's inlet.
pub fn other_member_id(external_id: &str) -> String {
    handoff_config::member_id(OTHER_INLET, external_id).to_string()
}

/// The member id of a customer of the Selarti inlet.
pub fn ai_member_id(external_id: &str) -> String {
    handoff_config::member_id(AI_INLET, external_id).to_string()
}

/// A nats-server of a test's own, on a free port with its own store, which the test may
/// stop and start again (the shared server on 4222 is never touched).
pub struct OwnNats {
    pub url: String,
    port: u16,
    store: PathBuf,
    max_payload: Option<usize>,
    process: Option<tokio::process::Child>,
}

impl OwnNats {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With the server's largest message set to `max_payload` bytes, when given.
    pub async fn start_with(max_payload: Option<usize>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = std::env::temp_dir().join(format!("handoff-nats-{}", Uuid::new_v4().simple()));
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            max_payload,
            process: None,
        };
        nats.up().await;
        nats
    }

    /// Starts the server (again), with the store it had; returns once it takes clients.
    pub async fn up(&mut self) {
        let binary = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
        let mut command = tokio::process::Command::new(binary);
        if let Some(max) = self.max_payload {
            // Not a command-line flag: a configuration file says it.
            let conf = self.store.with_extension("conf");
            std::fs::write(&conf, format!("max_payload: {max}\n")).unwrap();
            command.arg("-c").arg(conf);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(format!("{}.log", self.store.display())).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // JetStream answers its API (the client's account query expects a newer shape).
            if let Ok(client) = async_nats::connect(&self.url).await
                && let Ok(Ok(reply)) = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.request("$JS.API.INFO", "".into()),
                )
                .await
                && !String::from_utf8_lossy(&reply.payload).contains("\"error\"")
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server never came up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server the hard way (SIGKILL): what it had not written to its store is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_file(self.store.with_extension("conf"));
    }
}

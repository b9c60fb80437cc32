//! handoffctl: operate a Handoff deployment through the router's admin API (gRPC).
//!
//! It finds the API at `HANDOFF_ADMIN__URL` (or `--url`) and presents
//! `HANDOFF_ADMIN__TOKEN` (or `--token`), the same settings the router reads. Tables for
//! people by default; `--json` prints the API's answers for scripts.

use clap::{Args, Parser, Subcommand};
use handoff_config::Settings;
use handoff_proto::admin::admin_client::AdminClient;
use handoff_proto::admin::{self as api};
use secrecy::ExposeSecret as _;
use serde::Serialize;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "handoffctl", version, about = "Operate a Handoff deployment")]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The router's admin API (default: HANDOFF_ADMIN__URL, else http://127.0.0.1:8091).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The admin token (default: HANDOFF_ADMIN__TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Channels: list them, or get, disable or enable one.
    Channels {
        #[command(subcommand)]
        action: Option<ChannelAction>,
    },
    /// Create or update the channels a channels file lists (the others stay as they are).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Validate and show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Find a member by id, or by channel and external id.
    Member(FindMember),
    /// Conversations: list them (open ones by default), or get one with its transcript.
    Conversations {
        #[command(subcommand)]
        action: Option<ConversationAction>,
        #[command(flatten)]
        filter: ConversationFilter,
    },
    /// End an open conversation; the member goes back to the bot.
    Close {
        conversation_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Hand a member to their channel's human agents.
    Handoff {
        member_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Where is my message: every step of one message (an event id or a platform's id).
    Trace { message_id: String },
    /// Messages parked because they could not be handled.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Subcommand)]
enum ChannelAction {
    List,
    Get {
        id: String,
    },
    /// Refuse new messages on the channel; what it holds is still delivered.
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// Switch an outlet unavailable: handoffs to it fail as outside its hours (`unavailable`).
    Unavailable {
        id: String,
    },
    /// Switch an outlet back to taking handoffs.
    Available {
        id: String,
    },
}

#[derive(Args)]
struct FindMember {
    /// Handoff's member `_id`.
    #[arg(long, conflicts_with_all = ["channel", "external_id"])]
    id: Option<String>,
    #[arg(long, requires = "external_id")]
    channel: Option<String>,
    #[arg(long, requires = "channel")]
    external_id: Option<String>,
}

#[derive(Subcommand)]
enum ConversationAction {
    Get { id: String },
}

#[derive(Args)]
struct ConversationFilter {
    /// pending, live or closed (default: the open ones).
    #[arg(long, default_value = "")]
    state: String,
    /// An inlet or outlet channel id.
    #[arg(long, default_value = "")]
    channel: String,
    #[arg(long, default_value_t = 100)]
    limit: i32,
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

/// Presents the admin token on every call.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = AdminClient<InterceptedService<Channel, Bearer>>;

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

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let settings = Settings::load()?;
    let url = cli.url.clone().unwrap_or(settings.admin.url);
    let token = cli
        .token
        .clone()
        .or_else(|| settings.admin.token.map(|t| t.expose_secret().to_string()))
        .ok_or_else(|| anyhow::anyhow!("no admin token: set HANDOFF_ADMIN__TOKEN or --token"))?;
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let channel = Channel::from_shared(url.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {url}: {e}"))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

/// A refusal from the API, said plainly.
/// `channels unavailable|available <id>`.
async fn set_availability(
    client: &mut Client,
    json: bool,
    id: String,
    available: bool,
) -> anyhow::Result<()> {
    let channel = client
        .set_availability(api::SetAvailabilityRequest { id, available })
        .await
        .map_err(refused)?
        .into_inner();
    show(json, &channel, || {
        if channel.available {
            println!("outlet {} takes handoffs", channel.id)
        } else {
            println!("outlet {} is unavailable: handoffs to it fail", channel.id)
        }
    });
    Ok(())
}

fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Channels { action } => match action.unwrap_or(ChannelAction::List) {
            ChannelAction::List => {
                let list = client
                    .list_channels(api::ListChannelsRequest {})
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &list, || channels_table(&list.channels));
            }
            ChannelAction::Get { id } => {
                let channel = client
                    .get_channel(api::GetChannelRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &channel, || {
                    channels_table(std::slice::from_ref(&channel));
                    println!("\nsettings: {}", channel.settings_json);
                });
            }
            ChannelAction::Disable { id } => {
                let channel = client
                    .disable_channel(api::SetChannelEnabledRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &channel, || {
                    println!("channel {} disabled: it refuses new messages", channel.id)
                });
            }
            ChannelAction::Enable { id } => {
                let channel = client
                    .enable_channel(api::SetChannelEnabledRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &channel, || {
                    println!("channel {} enabled", channel.id)
                });
            }
            ChannelAction::Unavailable { id } => {
                set_availability(&mut client, json, id, false).await?
            }
            ChannelAction::Available { id } => {
                set_availability(&mut client, json, id, true).await?
            }
        },
        Command::Apply { file, dry_run } => {
            let document = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let applied = client
                .apply_channels(api::ApplyChannelsRequest { document, dry_run })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &applied, || {
                let verb = if dry_run { "would be " } else { "" };
                for (what, ids) in [
                    ("created", &applied.created),
                    ("updated", &applied.updated),
                    ("unchanged", &applied.unchanged),
                ] {
                    for id in ids {
                        println!("channel {id} {verb}{what}");
                    }
                }
            });
        }
        Command::Member(find) => {
            let member = client
                .find_member(api::FindMemberRequest {
                    id: find.id.unwrap_or_default(),
                    channel: find.channel.unwrap_or_default(),
                    external_id: find.external_id.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &member, || {
                table(
                    &[
                        "ID",
                        "CHANNEL",
                        "EXTERNAL ID",
                        "STATE",
                        "CONVERSATION",
                        "SINCE",
                    ],
                    vec![vec![
                        member.id.clone(),
                        member.channel.clone(),
                        member.external_id.clone(),
                        member.state.clone(),
                        member.conversation_id.clone(),
                        member.created_at.clone(),
                    ]],
                );
                println!("\nprofile: {}", member.profile_json);
            });
        }
        Command::Conversations { action, filter } => match action {
            None => {
                let list = client
                    .list_conversations(api::ListConversationsRequest {
                        state: filter.state,
                        channel: filter.channel,
                        limit: filter.limit,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &list, || conversations_table(&list.conversations));
            }
            Some(ConversationAction::Get { id }) => {
                let detail = client
                    .get_conversation(api::GetConversationRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &detail, || {
                    conversations_table(detail.conversation.as_slice());
                    println!();
                    table(
                        &["AT", "AUTHOR", "CHANNEL", "TEXT"],
                        detail
                            .transcript
                            .iter()
                            .map(|l| {
                                vec![
                                    l.at.clone(),
                                    if l.withheld {
                                        format!("{} (withheld)", l.author)
                                    } else {
                                        l.author.clone()
                                    },
                                    l.channel.clone(),
                                    l.text.clone(),
                                ]
                            })
                            .collect(),
                    );
                });
            }
        },
        Command::Close {
            conversation_id,
            reason,
        } => {
            let accepted = client
                .close_conversation(api::CloseConversationRequest {
                    id: conversation_id.clone(),
                    reason,
                })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &accepted, || {
                println!(
                    "closing conversation {conversation_id} (event {})",
                    accepted.event_id
                )
            });
        }
        Command::Handoff { member_id, reason } => {
            let accepted = client
                .request_handoff(api::RequestHandoffRequest {
                    member_id: member_id.clone(),
                    reason,
                })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &accepted, || {
                println!(
                    "handing member {member_id} to an agent (event {})",
                    accepted.event_id
                )
            });
        }
        Command::Trace { message_id } => {
            let trace = client
                .trace_message(api::TraceMessageRequest { id: message_id })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &trace, || {
                println!(
                    "message {} ({}) of member {}\n",
                    trace.event_id, trace.kind, trace.member_id
                );
                table(
                    &["AT", "STEP", "SERVICE", "DETAIL"],
                    trace
                        .steps
                        .iter()
                        .map(|s| {
                            vec![
                                s.at.clone(),
                                s.step.clone(),
                                s.service.clone(),
                                s.detail.clone(),
                            ]
                        })
                        .collect(),
                );
            });
        }
        Command::DeadLetters(command) => dead_letters(&mut client, json, command).await?,
    }
    Ok(())
}

async fn dead_letters(client: &mut Client, json: bool, command: DeadLetters) -> anyhow::Result<()> {
    match command {
        DeadLetters::List { all, limit } => {
            let list = client
                .list_dead_letters(api::ListDeadLettersRequest { all, limit })
                .await
                .map_err(refused)?
                .into_inner();
            show(json, &list, || {
                if list.dead_letters.is_empty() {
                    println!("no dead letters");
                    return;
                }
                table(
                    &["ID", "PARKED AT", "SERVICE", "KIND", "STATE", "REASON"],
                    list.dead_letters
                        .iter()
                        .map(|l| {
                            vec![
                                l.id.to_string(),
                                l.parked_at.clone(),
                                l.service.clone(),
                                l.kind.clone(),
                                l.state.clone(),
                                l.reason.chars().take(80).collect(),
                            ]
                        })
                        .collect(),
                );
            });
        }
        DeadLetters::Replay { ids } => {
            for id in ids {
                let letter = client
                    .replay_dead_letter(api::DeadLetterRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &letter, || println!("replayed {id}"));
            }
        }
        DeadLetters::Drop { ids } => {
            for id in ids {
                let letter = client
                    .drop_dead_letter(api::DeadLetterRequest { id })
                    .await
                    .map_err(refused)?
                    .into_inner();
                show(json, &letter, || println!("dropped {id}"));
            }
        }
    }
    Ok(())
}

fn show<T: Serialize>(json: bool, value: &T, human: impl FnOnce()) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human();
    }
}

fn channels_table(channels: &[api::Channel]) {
    table(
        &[
            "ID",
            "ORG",
            "PLATFORM",
            "ROLE",
            "ENABLED",
            "AVAILABLE",
            "BOT",
            "OUTLET",
            "UPDATED",
        ],
        channels
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.org.clone(),
                    c.platform.clone(),
                    c.role.clone(),
                    if c.enabled { "yes" } else { "no" }.into(),
                    match (c.role.as_str(), c.available) {
                        ("outlet", true) => "yes",
                        ("outlet", false) => "no",
                        _ => "",
                    }
                    .into(),
                    c.bot.clone(),
                    c.outlet.clone(),
                    c.updated_at.clone(),
                ]
            })
            .collect(),
    );
}

fn conversations_table(conversations: &[api::Conversation]) {
    if conversations.is_empty() {
        println!("no conversations");
        return;
    }
    table(
        &[
            "ID",
            "STATE",
            "INLET",
            "EXTERNAL ID",
            "OUTLET",
            "OPENED",
            "CLOSE REASON",
            "CSAT",
            "NEXT TIMER",
        ],
        conversations
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.state.clone(),
                    c.inlet_channel.clone(),
                    c.external_id.clone(),
                    c.outlet_channel.clone(),
                    c.opened_at.clone(),
                    c.close_reason.clone(),
                    c.csat.clone(),
                    if c.next_timer.is_empty() {
                        String::new()
                    } else {
                        format!("{} at {}", c.next_timer, c.next_timer_at)
                    },
                ]
            })
            .collect(),
    );
}

/// Left-aligned columns as wide as their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

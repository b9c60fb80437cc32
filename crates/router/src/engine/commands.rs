//! The commands a batch derives: each machine `Command` as the outbox envelope for the
//! service that serves its target's platform, the Livechat request a handoff opens, and
//! the lifecycle events an org's subscribers get.

use handoff_bus::{Service, derived_id};
use handoff_config::Channel;
use handoff_platforms::content::content_to_response;
use handoff_proto::{
    Body, DeliverLifecycle, DeliverToMember, DeliverToOutlet, HandoffDetails, RelayToOutlet,
    RequestLivechat,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Engine;
use super::work::Work;
use crate::machine::{Command, Line, event_content};
use crate::model::Author;
use crate::store::{self, members::MemberRow};

impl Engine {
    /// Queues a command for the service that serves its channel's platform.
    pub(super) fn send(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        command: Command,
    ) -> anyhow::Result<()> {
        let (channel, conversation, body) = match command {
            Command::ToBot {
                bot,
                live,
                mut send,
            } => {
                send.member = Some(member.to_proto(live));
                send.epoch = u32::try_from(work.epoch).unwrap_or_default();
                (bot, None, Body::SendToBot(send))
            }
            Command::Context {
                outlet,
                conversation,
                content,
            } => {
                let answer = content_to_response(&content);
                let mut detail = json!({"message": answer});
                if let Some(text) = answer["text"].as_str() {
                    detail["text"] = json!(format!("The bot would have answered: {text}"));
                }
                (
                    outlet,
                    Some(conversation),
                    Body::RelayToOutlet(RelayToOutlet {
                        member: Some(member.to_proto(true)),
                        content: Some(event_content("BOT_ANSWER_WITHHELD", detail)),
                        ..Default::default()
                    }),
                )
            }
            Command::ToMember {
                live,
                content,
                from,
            } => (
                member.channel_id.clone(),
                None,
                Body::DeliverToMember(DeliverToMember {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                    sender: match from {
                        Author::Agent => handoff_proto::Sender::Agent,
                        Author::System => handoff_proto::Sender::Hub,
                        Author::Bot | Author::Customer => handoff_proto::Sender::Bot,
                    } as i32,
                }),
            ),
            Command::Relay {
                outlet,
                conversation,
                live,
                content,
            } => (
                outlet,
                Some(conversation),
                Body::RelayToOutlet(RelayToOutlet {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                    ..Default::default()
                }),
            ),
            Command::Mirror {
                outlet,
                content,
                from,
            } => (
                outlet,
                None,
                Body::RelayToOutlet(RelayToOutlet {
                    member: Some(member.to_proto(false)),
                    content: Some(content),
                    mode: "bot".into(),
                    author: match from {
                        Author::Customer => handoff_proto::Sender::Customer,
                        Author::Agent => handoff_proto::Sender::Agent,
                        Author::Bot => handoff_proto::Sender::Bot,
                        Author::System => handoff_proto::Sender::Hub,
                    } as i32,
                }),
            ),
            Command::ToOutlet {
                outlet,
                conversation,
                live,
                content,
                reference,
            } => (
                outlet,
                Some(conversation),
                Body::DeliverToOutlet(DeliverToOutlet {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                    conversation_ref: reference,
                }),
            ),
        };
        work.command(self.service_of(&channel)?, &channel, conversation, body);
        Ok(())
    }

    /// BOT → PENDING: the conversation, its HANDOFF_REQUESTED line and the Livechat request.
    /// `false` when the member already has an open conversation. `offline`: the desk is
    /// closed and wants the request anyway; the conversation is closed at once
    /// (`outside_hours`) and the member stays with the bot.
    pub(super) async fn open_handoff(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        inlet: &Channel,
        outlet: &str,
        mut details: HandoffDetails,
        offline: bool,
    ) -> anyhow::Result<bool> {
        if details.summary.is_empty() {
            details.summary = dialog_summary(work, member.id).await?;
        }
        let conv_id: Uuid = derived_id(&work.cause.event_id, "conversation", 0).parse()?;
        let token = history_token();
        let ttl = inlet.handoff.history_link_ttl_secs as f64;
        let mut meta: Value = serde_json::from_str(&details.meta_json).unwrap_or(json!({}));
        // A returning customer: the desk may route them to whoever served them last.
        if let Some(previous) = self.returning(work, member, outlet).await?
            && let Value::Object(m) = &mut meta
        {
            m.extend(previous);
            details.meta_json = meta.to_string();
        }
        let opened = store::conversations::open(
            &mut **work.tx,
            store::conversations::NewConversation {
                id: conv_id,
                member_id: member.id,
                outlet_channel_id: outlet,
                summary: &details.summary,
                group_name: &details.group_name,
                label: &details.label,
                meta: &meta,
                trigger: &details.trigger,
                history_token: &token,
                history_ttl_secs: ttl,
                closed_as: offline.then_some("outside_hours"),
            },
        )
        .await?;
        if !opened {
            return Ok(false);
        }
        self.lifecycle(
            work,
            member,
            inlet,
            if offline {
                "handoff_failed"
            } else {
                "handoff_requested"
            },
            Some(conv_id),
            json!({"outlet": outlet, "trigger": details.trigger, "groupName": details.group_name,
                   "reason": if offline { "outside_hours" } else { "" }}),
        );
        if !offline {
            // What waited for a coalescing bot is the desk's now, held with the rest.
            work.pending.write_lines(work.tx).await?;
            store::messages::attach_turn(&mut **work.tx, member.id, conv_id).await?;
        }
        let content = event_content(
            "HANDOFF_REQUESTED",
            json!({"trigger": details.trigger, "summary": details.summary, "groupName": details.group_name}),
        );
        work.record(
            member.id,
            &Line {
                author: Author::System,
                channel: member.channel_id.clone(),
                conversation: Some(conv_id),
                content,
                held: false,
                withheld: false,
            },
        );
        work.command(
            self.service_of(outlet)?,
            outlet,
            Some(conv_id),
            Body::RequestLivechat(RequestLivechat {
                member: Some(member.to_proto(false)),
                details: Some(details),
                chat_history_url: format!("{}/history/{token}", self.public_url),
            }),
        );
        Ok(true)
    }

    /// Tells the org's subscribers (`role: subscriber`) of a lifecycle event, one command
    /// each, delivered (signed, retried, parked) like every other call; nothing when the
    /// org has none. Counted once the batch commits.
    pub(super) fn lifecycle(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        inlet: &Channel,
        event: &'static str,
        conversation: Option<Uuid>,
        detail: Value,
    ) {
        let outlet = detail["outlet"].as_str().unwrap_or_default().to_string();
        let reason = detail["reason"].as_str().unwrap_or_default().to_string();
        work.lifecycle
            .push((event, outlet, reason, detail["seconds"].as_f64()));
        // A catalog holds tens of channels, so a scan is cheaper than an index to keep;
        // most orgs have no subscriber, and then no event body is built at all.
        let catalog = self.catalog.load();
        let subscribers: Vec<&str> = catalog
            .channels
            .iter()
            .filter(|c| c.org == inlet.org && c.role == handoff_config::Role::Subscriber)
            .filter(|c| {
                matches!(catalog.platforms.get(&c.id).map(|s| &**s),
                    Some(handoff_platforms::ChannelSettings::Subscriber(s)) if s.wants(event))
            })
            .map(|c| c.id.as_str())
            .collect();
        if subscribers.is_empty() {
            return;
        }
        let mut body = json!({
            "type": event,
            "id": derived_id(&work.cause.event_id, event, 0),
            "at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "org": inlet.org,
            "inlet": inlet.id,
            "memberId": member.id,
            "externalId": member.external_id,
            "conversationId": conversation,
        });
        if let (Value::Object(b), Value::Object(d)) = (&mut body, detail) {
            b.extend(d.into_iter().filter(|(_, v)| *v != json!("")));
        }
        for subscriber in subscribers {
            work.command(
                Service::OutletGateway,
                subscriber,
                conversation,
                Body::DeliverLifecycle(DeliverLifecycle {
                    event_json: body.to_string(),
                }),
            );
        }
    }

    /// What a new handoff to `outlet` says of the member's previous live chat with it,
    /// when that closed within the outlet's return window.
    async fn returning(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        outlet: &str,
    ) -> anyhow::Result<Option<serde_json::Map<String, Value>>> {
        let window = self
            .catalog
            .load()
            .channels
            .get(outlet)
            .map_or(0, |o| o.live_chat.return_window_secs);
        let (Some(previous), Some(age)) = (member.last_live, member.last_live_age) else {
            return Ok(None);
        };
        if member.last_live_outlet.as_deref() != Some(outlet) || age > window as f64 {
            return Ok(None);
        }
        let Some((group, agent)) = store::conversations::previous(&mut **work.tx, previous).await?
        else {
            return Ok(None);
        };
        let mut meta = serde_json::Map::new();
        meta.insert("previousConversationId".into(), json!(previous));
        meta.insert("previousGroupName".into(), json!(group));
        if let Some(agent) = agent {
            meta.insert("previousAgentName".into(), json!(agent));
        }
        Ok(Some(meta))
    }
}

pub(crate) fn history_token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines of the dialog before a handoff, oldest first, for an agent who gets no summary
/// from the bot (Selarti hands over without one).
async fn dialog_summary(work: &mut Work<'_>, member: Uuid) -> sqlx::Result<String> {
    // The lines this event recorded are part of the dialog.
    work.pending.write_lines(work.tx).await?;
    const LINES: i64 = 6;
    const MAX_CHARS: usize = 1_000;
    let rows = store::messages::last_dialog(&mut **work.tx, member, LINES).await?;
    let mut lines: Vec<String> = rows
        .into_iter()
        .rev()
        .filter_map(|(author, text)| {
            let who = match author {
                Author::Customer => "Customer",
                Author::Bot => "Bot",
                Author::Agent | Author::System => "Agent",
            };
            text.filter(|t| !t.trim().is_empty())
                .map(|t| format!("{who}: {}", t.trim()))
        })
        .collect();
    if lines.is_empty() {
        lines.push("The bot handed the customer over.".into());
    }
    let mut summary = lines.join("\n");
    if summary.chars().count() > MAX_CHARS {
        summary = summary.chars().take(MAX_CHARS - 1).collect::<String>() + "…";
    }
    Ok(summary)
}

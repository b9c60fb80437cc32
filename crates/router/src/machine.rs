//! The conversation state machine, as a pure function: what the router knows of a member
//! ([`Facts`]) and one event ([`Event`]) decide the [`Step`]s to take, in order. Nothing
//! here reads or writes anything; `engine` loads the facts and applies the steps inside
//! the batch's transaction, where each transition is a compare-and-set that ends the
//! event's steps if the state moved meanwhile.
//!
//! ```text
//!   BOT ──handoff──▶ PENDING ──livechat 2xx──▶ LIVE ──done / idle timeout──▶ BOT
//!    ▲                  │                        │
//!    └─livechat fails / pending timeout          └─relay fails → bot (relayMessageError)
//! ```
//! BOT is "no open conversation". While PENDING, customer messages are held; they go to
//! the live chat once it accepts, or back to the bot if it does not.
//!
//! The customer is told of each move in a notice of their inlet (`notices`), sent in order
//! with their other messages. While a human owns the member (PENDING or LIVE) the bot
//! does not talk to the customer: its answers are kept in the transcript as withheld and
//! given to the desk as context. So is an answer to a turn from before a live chat started
//! or ended (the member's `epoch`, which the bot's answer carries back).

use handoff_config::{Channel, LiveChatRules, NoticeKind, OnBotDown, OnNoReply};
use handoff_proto::v1::content;
use handoff_proto::v1::send_to_bot::Reason;
use handoff_proto::{
    BotReply, Choice, Content, HandoffDetails, QuickReplies, SendToBot, Text, Trouble, Unsupported,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::{Author, OpenConversation, OpenState, Timer};

/// What is known when an event arrives.
pub(crate) struct Facts<'a> {
    /// The member's inlet channel.
    pub inlet: &'a Channel,
    /// The member's open conversation (PENDING or LIVE), if any.
    pub conversation: Option<&'a OpenConversation>,
    /// That conversation's outlet channel, when it is still configured.
    pub outlet: Option<&'a Channel>,
    /// Where a handoff goes: the inlet's outlet, or the inlet itself when its platform has
    /// humans of its own (a Zendesk department).
    pub handoff_to: Option<&'a str>,
    /// The channel the event came from.
    pub source: &'a str,
    /// The conversation the event names (results of a Livechat request, timeouts).
    pub named_conversation: &'a str,
    /// The member's profile, for the notices' templates (and their `locale`).
    pub profile: &'a Value,
    /// Bumped each time a live chat starts or ends (`BotReply.epoch`).
    pub epoch: i32,
    /// The member's bot was found down and has not answered since.
    pub bot_down: bool,
    /// The conversation whose satisfaction question the member may still answer.
    pub csat_pending: Option<Uuid>,
    /// The member's bot's coalescing window (0: each message is a turn).
    pub coalesce_ms: u64,
    /// The handoff target is outside its hours now.
    pub desk_closed: Option<DeskClosed>,
    /// The member's last live chat and its outlet, when that outlet takes the customer's
    /// next message back into it (`reopen`, within its return window).
    pub reopen: Option<(Uuid, String)>,
    /// The outlet whose agents watch this member's bot conversation (`liveChat.monitor`).
    pub watcher: Option<&'a str>,
}

/// A desk outside its business hours.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeskClosed {
    /// When it opens next, for a program (RFC 3339) and for the customer; empty: not
    /// within two weeks.
    pub next_open_at: String,
    pub next_open_text: String,
    /// The desk wants the request anyway (`offline: ticket`).
    pub offline_ticket: bool,
    /// An operator switched the outlet unavailable (`handoffctl channels unavailable`):
    /// the reason is `unavailable`, and the customer gets that notice.
    pub switched_off: bool,
}

/// An event, in the machine's terms.
pub(crate) enum Event<'a> {
    Inbound(&'a Content),
    BotReply(&'a BotReply),
    AgentMessage {
        content: &'a Content,
        /// The agent's display name, when the desk says it.
        agent: &'a str,
    },
    AgentCommand {
        content: &'a Content,
        reference: &'a str,
    },
    HandoffRequested(HandoffDetails),
    HandoffAccepted {
        external_id: &'a str,
        /// The agent who took it, when the desk says.
        agent: &'a str,
    },
    HandoffFailed {
        error: Value,
    },
    Timeout {
        state: &'a str,
        reason: &'a str,
    },
    RelayFailed {
        content: &'a Content,
        error: Value,
        /// The bot already heard of this message when its relay stalled.
        told: bool,
    },
    /// A relay to the desk, or a call to the bot, keeps failing and is still retried.
    DeliveryStalled {
        content: &'a Content,
        error: Value,
    },
    DeliveryFailed {
        content: Option<&'a Content>,
        detail: Value,
    },
    BotFailed {
        reason: &'a str,
    },
    /// A coalescing bot's turn is due: what the customer wrote meanwhile goes to it.
    TurnDue,
    /// An agent moves the live chat to another outlet (`transfer <outlet> [group]`).
    Transfer {
        content: &'a Content,
        /// The outlet named, and that channel when it is configured.
        to: &'a str,
        target: Option<&'a Channel>,
        group: &'a str,
    },
    /// The customer closed the chat on their side.
    CustomerLeft,
    /// An operator ended the named conversation (admin API).
    OperatorClose {
        reason: &'a str,
    },
}

/// A transcript line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub author: Author,
    pub channel: String,
    pub conversation: Option<Uuid>,
    pub content: Content,
    /// Held while PENDING, released when the live chat answers.
    pub held: bool,
    /// A bot answer the customer was not sent: a human owned the conversation.
    pub withheld: bool,
}

/// Where held messages go when they are released.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Release {
    /// Relayed to the live chat that accepted.
    Outlet(String),
    /// Relayed to an earlier live chat that takes the customer back (a refused transfer).
    Chat { outlet: String, conversation: Uuid },
    /// Back to the inlet's bot (none configured: they stay in the transcript only).
    Bot(Option<String>),
}

/// A command for another service.
// A handful per event, built and consumed at once: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    ToBot {
        bot: String,
        live: bool,
        send: SendToBot,
    },
    ToMember {
        live: bool,
        content: Content,
        /// Bot, agent, or the hub's own notices (`System`).
        from: Author,
    },
    /// A customer-side message for the live chat (Relay API).
    Relay {
        outlet: String,
        conversation: Uuid,
        live: bool,
        content: Content,
    },
    /// A message of the member's bot conversation copied to the outlet whose agents watch
    /// it (`liveChat.monitor`; Relay API with `mode: "bot"`).
    Mirror {
        outlet: String,
        content: Content,
        from: Author,
    },
    /// A bot answer withheld from the customer, for the live chat as context (Relay API,
    /// as a `BOT_ANSWER_WITHHELD` event).
    Context {
        outlet: String,
        conversation: Uuid,
        content: Content,
    },
    /// A bot's answer to an agent command, for the live chat (Send API).
    ToOutlet {
        outlet: String,
        conversation: Uuid,
        live: bool,
        content: Content,
        reference: String,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Records a line. With `first`, the line carries the platform's message id; one seen
    /// before makes the whole event a duplicate, and nothing of it applies.
    Record {
        line: Line,
        first: bool,
    },
    /// The conversation saw activity (the idle timeout starts again), from the customer
    /// or an agent (their own clocks: first reply, agent idle).
    Touch(Uuid, Author),
    /// BOT → PENDING: the conversation, its HANDOFF_REQUESTED line and the Livechat
    /// request. Ends the steps if a conversation opened meanwhile.
    OpenHandoff {
        outlet: String,
        details: HandoffDetails,
    },
    /// A handoff outside hours the desk wants anyway: the Livechat request goes out for a
    /// conversation closed at once (`outside_hours`); the member stays with the bot.
    OfflineTicket {
        outlet: String,
        details: HandoffDetails,
    },
    /// The customer was told the desk is not getting their messages (once per
    /// conversation).
    TroubleTold(Uuid),
    /// The customer's message waits for more within the bot's window: a `TurnDue` for
    /// the member in `after_ms`.
    ScheduleTurn {
        after_ms: u64,
    },
    /// What waits for the bot goes to it as one turn.
    ReleaseTurn,
    /// The customer was asked how the live chat went; an answer counts for a while.
    CsatAsked {
        conversation: Uuid,
        window_secs: u64,
    },
    /// The customer answered it (no question is open any more).
    CsatAnswered {
        conversation: Uuid,
        answer: String,
    },
    /// The member's bot is down (`true`: acted on, once) or answering again.
    BotDown(bool),
    /// The customer is told an agent joined the live chat (named, when known): once.
    AgentJoined {
        conversation: Uuid,
        name: String,
    },
    /// PENDING → LIVE; ends the steps unless still PENDING.
    BecomeLive {
        conversation: Uuid,
        external_id: String,
    },
    /// PENDING or LIVE → closed; ends the steps unless still in `from`.
    Close {
        conversation: Uuid,
        from: OpenState,
        reason: String,
    },
    /// Ends the steps unless the conversation is still overdue: a message may have
    /// arrived since the sweeper looked.
    IfOverdue {
        conversation: Uuid,
        state: OpenState,
        limit_secs: u64,
    },
    /// Ends the steps unless the live-chat timer is still due (checked in the
    /// transaction: an agent may have written since the sweeper looked).
    IfTimer {
        conversation: Uuid,
        timer: Timer,
        limit_secs: u64,
    },
    /// The customer was told of a live-chat timer (`idle`: the agent's silence; else the
    /// wait for a first reply), once per state.
    TimerTold {
        conversation: Uuid,
        idle: bool,
    },
    /// CLOSED → LIVE: the customer came back within the outlet's return window. Ends the
    /// steps if it cannot be reopened.
    Reopen {
        conversation: Uuid,
    },
    /// A lifecycle event for the org's subscribers (the transitions' own are emitted where
    /// they apply: `handoff_requested`, `accepted`, `ended`, `returned_to_bot`).
    Lifecycle {
        event: &'static str,
        conversation: Option<Uuid>,
        detail: Value,
    },
    /// LIVE → PENDING for want of a first reply: the Livechat request goes out again.
    Requeue {
        conversation: Uuid,
        outlet: String,
    },
    /// Held customer messages, oldest first, are no longer held and go to `to`.
    ReleaseHeld {
        conversation: Uuid,
        to: Release,
    },
    Send(Command),
    /// Nothing to do, and why (logged).
    Ignore(&'static str),
}

pub(crate) fn text_content(text: &str) -> Content {
    Content {
        kind: Some(content::Kind::Text(Text { text: text.into() })),
        raw_json: String::new(),
    }
}

/// A system event as content (`{"type": "EVENT", "event": …, …detail}`).
pub(crate) fn event_content(event: &str, detail: Value) -> Content {
    let mut v = json!({"type": "EVENT", "event": event});
    if let (Value::Object(m), Value::Object(d)) = (&mut v, detail) {
        m.extend(d);
    }
    // The model has no kind for the hub's own events: they travel as the platforms' unknown
    // types do, whole in `raw_json`.
    Content {
        kind: Some(content::Kind::Unsupported(Unsupported {
            original_type: "EVENT".into(),
        })),
        raw_json: v.to_string(),
    }
}

/// A failure's detail (`reason`, `status`, `message`), as the bot is told it.
fn trouble(detail: &Value) -> Trouble {
    Trouble {
        reason: detail["reason"].as_str().unwrap_or_default().to_string(),
        status: detail["status"]
            .as_i64()
            .and_then(|s| i32::try_from(s).ok()),
        message: detail["message"].as_str().unwrap_or_default().to_string(),
        next_open_at: detail["nextOpenAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The steps `event` calls for, given `facts`.
pub(crate) fn decide(facts: &Facts<'_>, event: Event<'_>) -> Vec<Step> {
    let mut d = Decision {
        facts,
        steps: Vec::new(),
    };
    match event {
        Event::Inbound(content) => d.inbound(content),
        Event::BotReply(reply) => d.bot_reply(reply),
        Event::AgentMessage { content, agent } => d.agent_message(content, agent),
        Event::AgentCommand { content, reference } => d.agent_command(content, reference),
        Event::HandoffRequested(details) => d.open_handoff(details),
        Event::HandoffAccepted { external_id, agent } => d.handoff_accepted(external_id, agent),
        Event::HandoffFailed { error } => {
            if let Some(c) = d.named(OpenState::Pending) {
                d.ended_before_live(c, "livechat_failed", error);
            }
        }
        Event::Timeout { state, reason } => d.timeout(state, reason),
        Event::RelayFailed {
            content,
            error,
            told,
        } => {
            d.system("RELAY_FAILED", error.clone(), d.open_id());
            if !told {
                d.tell_bot(SendToBot {
                    content: Some(content.clone()),
                    reason: Some(Reason::RelayFailed(trouble(&error))),
                    ..Default::default()
                });
            }
        }
        Event::DeliveryStalled { content, error } => d.stalled(content, error),
        Event::DeliveryFailed { content, detail } => d.delivery_failed(content, detail),
        Event::BotFailed { reason } => {
            d.system("BOT_FAILED", json!({"reason": reason}), d.open_id());
        }
        Event::CustomerLeft => d.customer_left(),
        Event::Transfer {
            content,
            to,
            target,
            group,
        } => d.transfer(content, to, target, group),
        Event::TurnDue => {
            if d.facts.conversation.is_none() && d.facts.inlet.bot.is_some() {
                d.steps.push(Step::ReleaseTurn);
            } else {
                // A handoff took what waited (it is held for the desk).
                d.steps
                    .push(Step::Ignore("a turn due while a human has the member"));
            }
        }
        Event::OperatorClose { reason } => d.end_named(None, reason),
    }
    d.steps
}

struct Decision<'f, 'a> {
    facts: &'f Facts<'a>,
    steps: Vec<Step>,
}

impl<'a> Decision<'_, 'a> {
    fn open_id(&self) -> Option<Uuid> {
        self.facts.conversation.map(|c| c.id)
    }

    fn live(&self) -> bool {
        matches!(self.facts.conversation, Some(c) if c.state == OpenState::Live)
    }

    /// The open conversation, if it is the one the event names and is in `state`.
    fn named(&self, state: OpenState) -> Option<&'a OpenConversation> {
        self.facts
            .conversation
            .filter(|c| c.id.to_string() == self.facts.named_conversation && c.state == state)
    }

    fn rules(&self) -> LiveChatRules {
        self.facts
            .outlet
            .map(|o| o.live_chat.clone())
            .unwrap_or_default()
    }

    fn pending(&self) -> bool {
        matches!(self.facts.conversation, Some(c) if c.state == OpenState::Pending)
    }

    fn record(&mut self, author: Author, channel: &str, content: &Content, first: bool) {
        let held = author == Author::Customer && self.pending();
        self.steps.push(Step::Record {
            line: Line {
                author,
                channel: channel.to_string(),
                conversation: self.open_id(),
                content: content.clone(),
                held,
                withheld: false,
            },
            first,
        });
    }

    /// A bot answer the customer does not get: kept, and given to the desk as context (at
    /// once when live, with the held messages when the desk accepts).
    fn withhold(&mut self, content: &Content) {
        let pending = self.pending();
        self.steps.push(Step::Record {
            line: Line {
                author: Author::Bot,
                channel: self.facts.source.to_string(),
                conversation: self.open_id(),
                content: content.clone(),
                held: pending,
                withheld: true,
            },
            first: false,
        });
        if let Some(c) = self
            .facts
            .conversation
            .filter(|c| c.state == OpenState::Live)
        {
            self.send(Command::Context {
                outlet: c.outlet_channel_id.clone(),
                conversation: c.id,
                content: content.clone(),
            });
        }
    }

    /// Tells the customer of a move, in their inlet's words (`agent`: the agent's name,
    /// when known). A silenced notice sends nothing.
    fn notice(&mut self, kind: NoticeKind, agent: &str, live: bool, conversation: Option<Uuid>) {
        let fallback = match kind {
            // Where this text was configured first: the outlet's `liveChat.endText`.
            NoticeKind::LiveChatEnded => self
                .facts
                .outlet
                .map(|o| o.live_chat.end_text.as_str())
                .unwrap_or(kind.default_text()),
            _ => kind.default_text(),
        };
        let profile = self.facts.profile;
        let locale = profile["locale"].as_str();
        let Some(template) = self.facts.inlet.notices.template(kind, locale, fallback) else {
            return;
        };
        let next_open = self
            .facts
            .desk_closed
            .as_ref()
            .map(|c| c.next_open_text.clone());
        let text = handoff_config::render(template, |name| match name {
            "agentName" => Some(agent.to_string()),
            "nextOpenAt" => next_open.clone(),
            _ => name
                .strip_prefix("profile.")
                .and_then(|field| match &profile[field] {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
        });
        self.system(
            "NOTICE",
            json!({"notice": kind.as_str(), "text": text}),
            conversation,
        );
        self.send(Command::ToMember {
            live,
            content: text_content(&text),
            from: Author::System,
        });
    }

    fn system(&mut self, event: &str, detail: Value, conversation: Option<Uuid>) {
        self.steps.push(Step::Record {
            line: Line {
                author: Author::System,
                channel: self.facts.inlet.id.clone(),
                conversation,
                content: event_content(event, detail),
                held: false,
                withheld: false,
            },
            first: false,
        });
    }

    fn send(&mut self, command: Command) {
        self.steps.push(Step::Send(command));
    }

    /// A copy of the bot conversation for the agents watching it, if any.
    fn mirror(&mut self, content: &Content, from: Author) {
        if let Some(outlet) = self.facts.watcher {
            self.send(Command::Mirror {
                outlet: outlet.to_string(),
                content: content.clone(),
                from,
            });
        }
    }

    /// To the inlet's bot, as a member out of any live chat unless said otherwise.
    fn tell_bot_as(&mut self, live: bool, send: SendToBot) {
        if let Some(bot) = self.facts.inlet.bot.clone() {
            self.send(Command::ToBot { bot, live, send });
        }
    }

    fn tell_bot(&mut self, send: SendToBot) {
        self.tell_bot_as(false, send);
    }

    fn inbound(&mut self, content: &Content) {
        let inlet = self.facts.inlet;
        let said = match &content.kind {
            Some(content::Kind::Text(t)) => t.text.as_str(),
            Some(content::Kind::Postback(p)) => p.payload.as_str(),
            _ => "",
        };
        let rules = &inlet.handoff;
        let is = |words: &[String]| {
            !said.trim().is_empty()
                && words
                    .iter()
                    .any(|w| w.trim().eq_ignore_ascii_case(said.trim()))
        };
        match self.facts.conversation {
            Some(c)
                if c.state == OpenState::Pending
                    && (is(&rules.cancel_keywords) || is(&rules.end_keywords)) =>
            {
                self.customer_word(content);
                self.cancel_handoff(c);
                return;
            }
            Some(c) if c.state == OpenState::Live && is(&rules.end_keywords) => {
                self.customer_word(content);
                self.send(Command::Relay {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live: false,
                    content: event_content("LIVE_CHAT_ENDED", json!({"reason": "customer_ended"})),
                });
                self.close(c, "customer_ended");
                return;
            }
            None => {
                if let (Some(asked), Some(csat)) = (self.facts.csat_pending, &inlet.csat)
                    && let Some(answer) = csat.answer(said)
                {
                    self.customer_word(content);
                    self.steps.push(Step::CsatAnswered {
                        conversation: asked,
                        answer: answer.to_string(),
                    });
                    self.system("CSAT", json!({"answer": answer}), Some(asked));
                    self.steps.push(Step::Lifecycle {
                        event: "csat",
                        conversation: Some(asked),
                        detail: json!({"answer": answer}),
                    });
                    if !csat.thanks.trim().is_empty() {
                        self.send(Command::ToMember {
                            live: false,
                            content: text_content(&csat.thanks),
                            from: Author::System,
                        });
                    }
                    return;
                }
                if let Some((previous, outlet)) = self.facts.reopen.clone() {
                    self.reopen(content, previous, outlet);
                    return;
                }
            }
            _ => {}
        }
        self.record(Author::Customer, &inlet.id, content, true);
        if self.facts.conversation.is_none() {
            self.mirror(content, Author::Customer);
        }
        let coalescing = self.facts.coalesce_ms > 0
            && inlet.bot.is_some()
            && self.facts.conversation.is_none()
            && handoff_trigger(inlet, content).is_none();
        if coalescing {
            // Held (without a conversation) until the turn is due; a handoff before then
            // takes it to the desk with the rest.
            if let Some(Step::Record { line, .. }) = self.steps.last_mut() {
                line.held = true;
            }
            self.steps.push(Step::ScheduleTurn {
                after_ms: self.facts.coalesce_ms,
            });
            return;
        }
        match self.facts.conversation {
            Some(c) if c.state == OpenState::Live => {
                self.steps.push(Step::Touch(c.id, Author::Customer));
                self.send(Command::Relay {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live: true,
                    content: content.clone(),
                });
            }
            // Held until the outlet accepts (then relayed) or fails (then given to the bot).
            Some(_) => {}
            None => match handoff_trigger(inlet, content) {
                Some(trigger) => self.open_handoff(HandoffDetails {
                    summary: format!("Customer asked for a human ({trigger})"),
                    trigger: trigger.into(),
                    meta_json: "{}".into(),
                    ..Default::default()
                }),
                None => self.tell_bot(SendToBot {
                    content: Some(content.clone()),
                    ..Default::default()
                }),
            },
        }
    }

    /// A customer's message that is a word to the hub (cancel, end, a rating), not for the
    /// bot or the desk: recorded, never held.
    fn customer_word(&mut self, content: &Content) {
        self.steps.push(Step::Record {
            line: Line {
                author: Author::Customer,
                channel: self.facts.inlet.id.clone(),
                conversation: self.open_id(),
                content: content.clone(),
                held: false,
                withheld: false,
            },
            first: true,
        });
    }

    /// LIVE with one outlet → PENDING with another of the org (or, for a Zendesk inlet's
    /// visitor, a department of its Zendesk account: `target` is then the inlet and `group`
    /// the department): the first desk hears the chat ended (`transferred`), the customer
    /// is told, and a Livechat request goes to the second; the customer's messages are
    /// held for it meanwhile.
    fn transfer(&mut self, content: &Content, to: &str, target: Option<&Channel>, group: &str) {
        let Some(c) = self
            .facts
            .conversation
            .filter(|c| c.state == OpenState::Live)
        else {
            self.steps
                .push(Step::Ignore("a transfer of a chat that is not live"));
            return;
        };
        if c.outlet_channel_id != self.facts.source {
            self.refuse("a transfer from an outlet that does not hold the live chat");
            return;
        }
        self.record(Author::Agent, self.facts.source, content, true);
        let inlet = self.facts.inlet;
        let Some(target) = target.filter(|t| {
            let desk = t.role == handoff_config::Role::Outlet && t.org == inlet.org;
            let department = t.id == inlet.id
                && t.platform == handoff_config::Platform::Zendesk
                && !group.is_empty();
            (desk || department) && t.id != c.outlet_channel_id
        }) else {
            self.send(Command::Relay {
                outlet: c.outlet_channel_id.clone(),
                conversation: c.id,
                live: true,
                content: event_content(
                    "TRANSFER_FAILED",
                    json!({"to": to, "reason": "not another outlet of this org, nor a department of the customer's Zendesk"}),
                ),
            });
            return;
        };
        let moved = json!({"reason": "transferred", "to": target.id});
        self.send(Command::Relay {
            outlet: c.outlet_channel_id.clone(),
            conversation: c.id,
            live: false,
            content: event_content("LIVE_CHAT_ENDED", moved.clone()),
        });
        self.steps.push(Step::Close {
            conversation: c.id,
            from: OpenState::Live,
            reason: "transferred".into(),
        });
        self.system(
            "TRANSFERRED",
            json!({"from": c.outlet_channel_id, "to": target.id}),
            Some(c.id),
        );
        self.steps.push(Step::Lifecycle {
            event: "transferred",
            conversation: Some(c.id),
            detail: json!({"outlet": c.outlet_channel_id, "to": target.id, "group": group}),
        });
        self.notice(NoticeKind::Transferred, "", false, Some(c.id));
        self.steps.push(Step::OpenHandoff {
            outlet: target.id.clone(),
            details: HandoffDetails {
                summary: format!("Transferred from {}", c.outlet_channel_id),
                group_name: group.to_string(),
                trigger: "transfer".into(),
                meta_json: json!({"transferredFrom": c.id, "fromOutlet": c.outlet_channel_id})
                    .to_string(),
                ..Default::default()
            },
        });
    }

    /// The customer writes again soon after a live chat with an outlet that reopens: the
    /// message goes back into that chat, and the bot hears it is to stay silent.
    fn reopen(&mut self, content: &Content, previous: Uuid, outlet: String) {
        self.steps.push(Step::Record {
            line: Line {
                author: Author::Customer,
                channel: self.facts.inlet.id.clone(),
                conversation: Some(previous),
                content: content.clone(),
                held: false,
                withheld: false,
            },
            first: true,
        });
        self.steps.push(Step::Reopen {
            conversation: previous,
        });
        let returned = json!({"reason": "customer_returned"});
        self.system("LIVE_CHAT_STARTED", returned.clone(), Some(previous));
        self.tell_bot_as(
            true,
            SendToBot {
                content: Some(event_content("LIVE_CHAT_STARTED", returned.clone())),
                reason: Some(Reason::LiveChatStarted(trouble(&returned))),
                ..Default::default()
            },
        );
        self.send(Command::Relay {
            outlet,
            conversation: previous,
            live: true,
            content: content.clone(),
        });
    }

    /// PENDING → BOT on the customer's word: the desk is told, the customer hears it
    /// worked, and the bot takes back what was held.
    fn cancel_handoff(&mut self, c: &OpenConversation) {
        self.steps.push(Step::Close {
            conversation: c.id,
            from: OpenState::Pending,
            reason: "customer_cancelled".into(),
        });
        let cancelled = json!({"reason": "customer_cancelled"});
        self.system("HANDOFF_CANCELLED", cancelled.clone(), Some(c.id));
        self.send(Command::Relay {
            outlet: c.outlet_channel_id.clone(),
            conversation: c.id,
            live: false,
            content: event_content("HANDOFF_CANCELLED", cancelled.clone()),
        });
        self.notice(NoticeKind::HandoffCancelled, "", false, Some(c.id));
        self.tell_bot(SendToBot {
            content: Some(event_content("HANDOFF_FAILED", cancelled.clone())),
            reason: Some(Reason::HandoffFailed(trouble(&cancelled))),
            ..Default::default()
        });
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Bot(self.facts.inlet.bot.clone()),
        });
    }

    /// BOT → PENDING towards the inlet's outlet; a member already handed off stays so.
    fn open_handoff(&mut self, details: HandoffDetails) {
        if self.facts.conversation.is_some() {
            self.steps
                .push(Step::Ignore("handoff asked while one is open"));
            return;
        }
        match self.facts.handoff_to {
            Some(outlet) if self.facts.desk_closed.is_some() => {
                self.outside_hours(outlet, details);
            }
            Some(outlet) => {
                self.steps.push(Step::OpenHandoff {
                    outlet: outlet.to_string(),
                    details,
                });
                self.notice(NoticeKind::HandoffRequested, "", false, None);
            }
            None => {
                let error = json!({"reason": "no_outlet", "message": "this inlet has no outlet configured"});
                self.system("HANDOFF_FAILED", error.clone(), None);
                self.steps.push(Step::Lifecycle {
                    event: "handoff_failed",
                    conversation: None,
                    detail: json!({"reason": "no_outlet"}),
                });
                self.notice(NoticeKind::Unavailable, "", false, None);
                self.tell_bot(SendToBot {
                    content: Some(event_content("HANDOFF_FAILED", error.clone())),
                    reason: Some(Reason::HandoffFailed(trouble(&error))),
                    ..Default::default()
                });
            }
        }
    }

    /// A handoff while the desk is closed: the customer hears when it opens, the bot gets
    /// `handoff_failed` (`outside_hours`, `nextOpenAt`), and the desk the request only if
    /// it wants offline tickets.
    fn outside_hours(&mut self, outlet: &str, mut details: HandoffDetails) {
        let closed = self.facts.desk_closed.clone().unwrap_or_default();
        if closed.offline_ticket {
            let mut meta: Value = serde_json::from_str(&details.meta_json).unwrap_or(json!({}));
            if let Value::Object(m) = &mut meta {
                m.insert("offline".into(), json!(true));
            }
            details.meta_json = meta.to_string();
            self.steps.push(Step::OfflineTicket {
                outlet: outlet.to_string(),
                details,
            });
        }
        let (reason, message, notice) = if closed.switched_off {
            (
                "unavailable",
                "the desk is switched unavailable",
                NoticeKind::Unavailable,
            )
        } else {
            (
                "outside_hours",
                "the desk is outside its hours",
                NoticeKind::OutsideHours,
            )
        };
        let error = json!({
            "reason": reason,
            "message": message,
            "nextOpenAt": closed.next_open_at,
        });
        self.system("HANDOFF_FAILED", error.clone(), None);
        self.steps.push(Step::Lifecycle {
            event: "handoff_failed",
            conversation: None,
            detail: json!({"outlet": outlet, "reason": reason, "offlineTicket": closed.offline_ticket}),
        });
        self.notice(notice, "", false, None);
        self.tell_bot(SendToBot {
            content: Some(event_content("HANDOFF_FAILED", error.clone())),
            reason: Some(Reason::HandoffFailed(trouble(&error))),
            ..Default::default()
        });
    }

    /// The event came from a channel that may not act on this member: it is recorded as
    /// refused (who tried, and why) and has no other effect. The gateways already refuse
    /// such calls at the edge; this holds even when one is wrong or a catalog change races.
    fn refuse(&mut self, why: &'static str) {
        self.system(
            "REFUSED",
            json!({"from": self.facts.source, "reason": why}),
            self.open_id(),
        );
        self.steps.push(Step::Ignore(why));
    }

    fn bot_reply(&mut self, r: &BotReply) {
        if self.facts.inlet.bot.as_deref() != Some(self.facts.source) {
            self.refuse("a bot reply from a channel that is not the member's bot");
            return;
        }
        if self.facts.bot_down {
            self.steps.push(Step::BotDown(false));
            self.system("BOT_BACK", json!({}), self.open_id());
        }
        // A human answering inside the bot's own platform (Selarti's panel) is an agent.
        let author = if r.author == "agent" {
            Author::Agent
        } else {
            Author::Bot
        };
        let live = self.live();
        let source = self.facts.source;
        // Asked before a live chat started or ended: the customer has moved on since.
        let stale = r
            .epoch
            .is_some_and(|e| i64::from(e) != i64::from(self.facts.epoch));
        // While PENDING nothing asks the bot, so whatever it says answers what came
        // before; while LIVE an answer asked for during the chat (to `relayMessageError`)
        // is the bot's to give, one that cannot say when it was asked (Selarti) is not.
        let owned = match self.facts.conversation.map(|c| c.state) {
            None => false,
            Some(OpenState::Pending) => true,
            Some(OpenState::Live) => r.epoch.is_none(),
        };
        let silenced = author == Author::Bot && (stale || owned);
        for response in &r.responses {
            if r.agent_conversation_id.is_empty() && silenced {
                self.withhold(response);
                continue;
            }
            self.record(author, source, response, false);
            if r.agent_conversation_id.is_empty() {
                self.send(Command::ToMember {
                    live,
                    content: response.clone(),
                    from: author,
                });
                if self.facts.conversation.is_none() {
                    self.mirror(response, author);
                }
            } else if let Some(c) = self.facts.conversation {
                // The answer to an agent command goes back to the live chat.
                self.send(Command::ToOutlet {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live,
                    content: response.clone(),
                    reference: r.agent_conversation_id.clone(),
                });
            }
        }
        if stale {
            // Its handoff or close was about a dialog that has moved on.
            if r.handoff.is_some() || r.close {
                self.steps
                    .push(Step::Ignore("a stale bot answer's handoff or close"));
            }
        } else if let Some(details) = r.handoff.clone() {
            if self.facts.conversation.is_none() {
                self.open_handoff(details);
            }
        } else if r.close
            && let Some(c) = self.facts.conversation
        {
            self.close(c, "bot_closed");
        }
    }

    /// A delivery keeps failing: a relay the desk refuses (the bot gets the message with
    /// `relayMessageError` and the customer the trouble notice, while the relay goes on
    /// being retried), or a bot that is down.
    fn stalled(&mut self, content: &Content, error: Value) {
        let source = self.facts.source;
        if self.facts.inlet.bot.as_deref() == Some(source) {
            self.bot_down(error);
            return;
        }
        let Some(c) = self
            .facts
            .conversation
            .filter(|c| c.outlet_channel_id == source)
        else {
            self.steps.push(Step::Ignore(
                "a stalled delivery to a channel that no longer serves the member",
            ));
            return;
        };
        self.system("RELAY_STALLED", error.clone(), Some(c.id));
        self.tell_bot(SendToBot {
            content: Some(content.clone()),
            reason: Some(Reason::RelayFailed(trouble(&error))),
            ..Default::default()
        });
        if !c.trouble_told {
            self.steps.push(Step::TroubleTold(c.id));
            self.notice(NoticeKind::Trouble, "", self.live(), Some(c.id));
        }
    }

    /// The bot has not answered for the inlet's `botDownSecs`: the customer is told, or
    /// handed to a human, once until the bot answers again; a human already on it needs
    /// nothing.
    fn bot_down(&mut self, error: Value) {
        if self.facts.bot_down {
            self.steps
                .push(Step::Ignore("the bot is already known to be down"));
            return;
        }
        self.steps.push(Step::BotDown(true));
        self.system("BOT_DOWN", error.clone(), self.open_id());
        if self.facts.conversation.is_some() {
            return;
        }
        match self.facts.inlet.handoff.on_bot_down {
            OnBotDown::Notify => self.notice(NoticeKind::Trouble, "", false, None),
            OnBotDown::Handoff => {
                let why = error["reason"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("it does not answer");
                self.open_handoff(HandoffDetails {
                    summary: format!(
                        "The assistant is unavailable ({why}); the customer needs a person."
                    ),
                    trigger: "bot_down".into(),
                    meta_json: "{}".into(),
                    ..Default::default()
                });
            }
        }
    }

    /// The chat is over on the customer's side: a live chat's agent is told, an open
    /// conversation closes, and nothing is sent to the customer any more.
    fn customer_left(&mut self) {
        let reason = "customer_left";
        let Some(c) = self.facts.conversation else {
            self.system("CUSTOMER_LEFT", json!({}), None);
            return;
        };
        if c.state == OpenState::Live {
            self.send(Command::Relay {
                outlet: c.outlet_channel_id.clone(),
                conversation: c.id,
                live: false,
                content: event_content("LIVE_CHAT_ENDED", json!({"reason": reason})),
            });
        }
        self.end(c, reason, false);
    }

    fn handoff_accepted(&mut self, external_id: &str, agent: &str) {
        let Some(c) = self.named(OpenState::Pending) else {
            self.steps.push(Step::Ignore("late livechat acceptance"));
            return;
        };
        self.steps.push(Step::BecomeLive {
            conversation: c.id,
            external_id: external_id.to_string(),
        });
        self.system(
            "LIVE_CHAT_STARTED",
            json!({"ticket": external_id}),
            Some(c.id),
        );
        if agent.is_empty() {
            // The desk took the request but has not said who: the agent's first message
            // says it.
            self.notice(NoticeKind::Queued, "", true, Some(c.id));
        } else {
            self.agent_joined(c, agent);
        }
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Outlet(c.outlet_channel_id.clone()),
        });
    }

    /// PENDING → BOT (the Livechat API failed, or nobody answered in time): the bot is told
    /// why and gets the messages the customer sent meanwhile.
    fn ended_before_live(&mut self, c: &OpenConversation, reason: &str, error: Value) {
        // Only a transfer that never went live goes back: one the new desk accepted and
        // then requeued for want of a reply has left the first desk behind.
        if let Some((back, outlet)) = c.transferred_from.clone().filter(|_| c.requeues == 0) {
            return self.transfer_refused(c, back, outlet, reason, error);
        }
        self.steps.push(Step::Close {
            conversation: c.id,
            from: OpenState::Pending,
            reason: reason.to_string(),
        });
        self.system("HANDOFF_FAILED", error.clone(), Some(c.id));
        self.notice(NoticeKind::Unavailable, "", false, Some(c.id));
        self.tell_bot(SendToBot {
            content: Some(event_content("HANDOFF_FAILED", error.clone())),
            reason: Some(Reason::HandoffFailed(trouble(&error))),
            ..Default::default()
        });
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Bot(self.facts.inlet.bot.clone()),
        });
    }

    /// A transfer the new desk refused or never accepted: the live chat it came from opens
    /// again (a new epoch, so the bot stays silent), that desk hears why, and what the
    /// customer wrote meanwhile goes there, in order. The customer stays with a human.
    fn transfer_refused(
        &mut self,
        c: &OpenConversation,
        back: Uuid,
        outlet: String,
        reason: &str,
        error: Value,
    ) {
        self.steps.push(Step::Close {
            conversation: c.id,
            from: OpenState::Pending,
            reason: reason.to_string(),
        });
        self.system("HANDOFF_FAILED", error.clone(), Some(c.id));
        self.steps.push(Step::Lifecycle {
            event: "handoff_failed",
            conversation: Some(c.id),
            detail: json!({"outlet": c.outlet_channel_id, "reason": reason, "transfer": true}),
        });
        self.steps.push(Step::Reopen { conversation: back });
        let failed = json!({
            "to": c.outlet_channel_id,
            "reason": error["reason"].as_str().unwrap_or(reason),
            "message": error["message"],
        });
        self.system("TRANSFER_FAILED", failed.clone(), Some(back));
        self.send(Command::Relay {
            outlet: outlet.clone(),
            conversation: back,
            live: true,
            content: event_content("TRANSFER_FAILED", failed),
        });
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Chat {
                outlet,
                conversation: back,
            },
        });
    }

    /// An agent took the member without a handoff: the bot hears it is to be silent.
    fn taken_over(&mut self, c: &OpenConversation) {
        let started = json!({"reason": "agent_takeover"});
        self.system("LIVE_CHAT_STARTED", started.clone(), Some(c.id));
        self.steps.push(Step::Lifecycle {
            event: "accepted",
            conversation: Some(c.id),
            detail: json!({"outlet": c.outlet_channel_id, "trigger": "agent_takeover"}),
        });
        self.tell_bot_as(
            true,
            SendToBot {
                content: Some(event_content("LIVE_CHAT_STARTED", started.clone())),
                reason: Some(Reason::LiveChatStarted(trouble(&started))),
                ..Default::default()
            },
        );
    }

    fn agent_joined(&mut self, c: &OpenConversation, agent: &str) {
        self.steps.push(Step::AgentJoined {
            conversation: c.id,
            name: agent.to_string(),
        });
        self.notice(NoticeKind::AgentJoined, agent, true, Some(c.id));
    }

    fn agent_message(&mut self, content: &Content, agent: &str) {
        let Some(c) = self
            .facts
            .conversation
            .filter(|c| c.state == OpenState::Live)
        else {
            self.steps.push(Step::Ignore(
                "agent message for a member not in a live chat",
            ));
            return;
        };
        if c.outlet_channel_id != self.facts.source {
            self.refuse("an agent message from an outlet that does not hold the live chat");
            return;
        }
        self.record(Author::Agent, self.facts.source, content, true);
        self.steps.push(Step::Touch(c.id, Author::Agent));
        if !c.replied {
            self.steps.push(Step::Lifecycle {
                event: "first_agent_reply",
                conversation: Some(c.id),
                detail: json!({"outlet": c.outlet_channel_id, "agentName": agent,
                               "seconds": c.in_state_secs}),
            });
        }
        if !c.agent_joined {
            if c.taken_over {
                self.taken_over(c);
            }
            let agent = if agent.is_empty() {
                &c.agent_name
            } else {
                agent
            };
            self.agent_joined(c, agent);
        }
        self.send(Command::ToMember {
            live: true,
            content: content.clone(),
            from: Author::Agent,
        });
    }

    fn agent_command(&mut self, content: &Content, reference: &str) {
        let Some(c) = self.facts.conversation else {
            self.steps
                .push(Step::Ignore("agent command without an open conversation"));
            return;
        };
        if c.outlet_channel_id != self.facts.source {
            self.refuse("an agent command from an outlet that does not hold the conversation");
            return;
        }
        self.record(Author::Agent, &c.outlet_channel_id, content, true);
        let text = match &content.kind {
            Some(content::Kind::Text(t)) => t.text.trim(),
            Some(content::Kind::Postback(p)) => p.payload.trim(),
            _ => "",
        };
        if text.eq_ignore_ascii_case(self.rules().end_command.trim()) {
            self.close(c, "agent_ended");
            return;
        }
        if text.eq_ignore_ascii_case(self.rules().takeover_command.trim()) {
            // The takeover itself happened at the edge (a compare-and-set); this says so.
            if c.taken_over && !c.agent_joined {
                self.taken_over(c);
                let agent = c.agent_name.clone();
                self.agent_joined(c, &agent);
            } else {
                self.steps
                    .push(Step::Ignore("a takeover of a chat already announced"));
            }
            return;
        }
        self.steps.push(Step::Touch(c.id, Author::Agent));
        let reference = if reference.is_empty() {
            c.id.to_string()
        } else {
            reference.to_string()
        };
        self.tell_bot_as(
            c.state == OpenState::Live,
            SendToBot {
                content: Some(content.clone()),
                reason: Some(Reason::AgentConversationId(reference)),
                ..Default::default()
            },
        );
    }

    /// LIVE (or PENDING) → BOT: the customer is told (the outlet's end text), the bot gets
    /// what was still held and is told.
    fn close(&mut self, c: &OpenConversation, reason: &str) {
        self.end(c, reason, true);
    }

    /// Closes a LIVE `c` with the customer there, telling them with `notice` rather than
    /// the end text (nobody ever answered).
    fn end_as(&mut self, c: &OpenConversation, reason: &str, notice: NoticeKind) {
        self.steps.push(Step::Close {
            conversation: c.id,
            from: c.state,
            reason: reason.to_string(),
        });
        let ended = json!({"reason": reason});
        self.system("LIVE_CHAT_ENDED", ended.clone(), Some(c.id));
        self.notice(notice, "", false, Some(c.id));
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Bot(self.facts.inlet.bot.clone()),
        });
        self.tell_bot(SendToBot {
            content: Some(event_content("LIVE_CHAT_ENDED", ended.clone())),
            reason: Some(Reason::LiveChatEnded(trouble(&ended))),
            ..Default::default()
        });
    }

    /// Closes `c`; the customer hears the end text only if they are still there to hear.
    fn end(&mut self, c: &OpenConversation, reason: &str, customer_there: bool) {
        self.steps.push(Step::Close {
            conversation: c.id,
            from: c.state,
            reason: reason.to_string(),
        });
        let ended = json!({"reason": reason});
        self.system("LIVE_CHAT_ENDED", ended.clone(), Some(c.id));
        if customer_there && c.state == OpenState::Live {
            self.notice(NoticeKind::LiveChatEnded, "", false, Some(c.id));
            if let Some(csat) = &self.facts.inlet.csat {
                self.ask_csat(c, csat);
            }
        }
        // Held messages go to the bot, unless nobody is left to answer them.
        let to = customer_there
            .then(|| self.facts.inlet.bot.clone())
            .flatten();
        self.steps.push(Step::ReleaseHeld {
            conversation: c.id,
            to: Release::Bot(to),
        });
        self.tell_bot(SendToBot {
            content: Some(event_content("LIVE_CHAT_ENDED", ended.clone())),
            reason: Some(Reason::LiveChatEnded(trouble(&ended))),
            ..Default::default()
        });
    }

    /// The satisfaction question, as quick replies (platforms without them get the text
    /// fallback they use for any quick replies).
    fn ask_csat(&mut self, c: &OpenConversation, csat: &handoff_config::CsatRules) {
        self.steps.push(Step::CsatAsked {
            conversation: c.id,
            window_secs: csat.window_secs,
        });
        self.send(Command::ToMember {
            live: false,
            content: Content {
                kind: Some(content::Kind::QuickReplies(QuickReplies {
                    text: csat.question.clone(),
                    options: csat
                        .replies
                        .iter()
                        .map(|r| Choice {
                            title: r.clone(),
                            payload: r.clone(),
                        })
                        .collect(),
                })),
                raw_json: String::new(),
            },
            from: Author::System,
        });
    }

    fn timeout(&mut self, state: &str, reason: &str) {
        let rules = self.rules();
        let (timer, limit_secs) = match reason {
            "first_reply" => (Timer::FirstReply, rules.first_reply_secs),
            "no_reply" => (Timer::NoReply, rules.requeue_secs),
            "agent_idle" => (Timer::AgentIdle, rules.agent_idle_secs),
            "agent_idle_close" => (Timer::AgentIdleClose, rules.agent_idle_grace_secs),
            _ => return self.end_named(Some(state), reason),
        };
        let Some(c) = self.named(OpenState::Live) else {
            self.steps
                .push(Step::Ignore("the conversation named has moved on"));
            return;
        };
        self.steps.push(Step::IfTimer {
            conversation: c.id,
            timer,
            limit_secs,
        });
        match timer {
            Timer::FirstReply | Timer::AgentIdle => {
                let idle = timer == Timer::AgentIdle;
                self.steps.push(Step::TimerTold {
                    conversation: c.id,
                    idle,
                });
                let notice = if idle {
                    NoticeKind::AgentIdle
                } else {
                    NoticeKind::StillWaiting
                };
                self.notice(notice, "", true, Some(c.id));
            }
            Timer::NoReply
                if rules.on_no_reply == OnNoReply::Requeue && c.requeues < rules.max_requeues =>
            {
                self.system(
                    "REQUEUED",
                    json!({"reason": "no_agent_reply", "requeues": c.requeues + 1}),
                    Some(c.id),
                );
                self.steps.push(Step::Requeue {
                    conversation: c.id,
                    outlet: c.outlet_channel_id.clone(),
                });
            }
            Timer::NoReply => {
                // Nobody answered (again): the bot takes the customer back.
                let reason = "no_agent_reply";
                self.send(Command::Relay {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live: false,
                    content: event_content("LIVE_CHAT_ENDED", json!({"reason": reason})),
                });
                self.end_as(c, reason, NoticeKind::Unavailable);
            }
            Timer::AgentIdleClose => {
                self.send(Command::Relay {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live: false,
                    content: event_content("LIVE_CHAT_ENDED", json!({"reason": reason})),
                });
                self.close(c, reason);
            }
        }
    }

    /// Ends the conversation the event names: a timeout (only if it is still in `state`
    /// and overdue), or an operator's close (`state` is `None`: whatever its state).
    fn end_named(&mut self, state: Option<&str>, reason: &str) {
        let Some(c) = self
            .facts
            .conversation
            .filter(|c| c.id.to_string() == self.facts.named_conversation)
            .filter(|c| state.is_none_or(|s| c.state.as_str() == s))
        else {
            self.steps
                .push(Step::Ignore("the conversation named has moved on"));
            return;
        };
        if state.is_some() {
            let rules = &self.facts.inlet.handoff;
            let limit_secs = match c.state {
                OpenState::Pending => rules.pending_timeout_secs,
                OpenState::Live => rules.live_idle_timeout_secs,
            };
            self.steps.push(Step::IfOverdue {
                conversation: c.id,
                state: c.state,
                limit_secs,
            });
        }
        match c.state {
            OpenState::Pending => {
                let error = json!({"reason": reason, "message": "no agent accepted in time"});
                self.ended_before_live(c, reason, error);
            }
            OpenState::Live => {
                // The agent's side learns the chat is over too.
                self.send(Command::Relay {
                    outlet: c.outlet_channel_id.clone(),
                    conversation: c.id,
                    live: false,
                    content: event_content("LIVE_CHAT_ENDED", json!({"reason": reason})),
                });
                self.close(c, reason);
            }
        }
    }

    fn delivery_failed(&mut self, content: Option<&Content>, detail: Value) {
        self.system("DELIVERY_FAILED", detail.clone(), self.open_id());
        // An agent's message that never reached the customer: the agent is told. (Not when
        // the failed delivery was to the outlet itself.)
        if self.facts.source == self.facts.inlet.id
            && let Some(c) = self
                .facts
                .conversation
                .filter(|c| c.state == OpenState::Live)
        {
            let mut notice = detail;
            if let Some(content) = content {
                notice["message"] = handoff_platforms::content::content_to_response(content);
            }
            self.send(Command::Relay {
                outlet: c.outlet_channel_id.clone(),
                conversation: c.id,
                live: true,
                content: event_content("DELIVERY_FAILED", notice),
            });
        }
    }
}

fn handoff_trigger(inlet: &Channel, content: &Content) -> Option<&'static str> {
    match &content.kind {
        Some(content::Kind::Text(t))
            if inlet
                .handoff
                .keywords
                .iter()
                .any(|k| k.trim().eq_ignore_ascii_case(t.text.trim())) =>
        {
            Some("keyword")
        }
        Some(content::Kind::Postback(p))
            if inlet.handoff.postbacks.iter().any(|k| k == &p.payload) =>
        {
            Some("postback")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use handoff_config::Channels;

    use super::*;

    const CHANNELS: &str = "channels:
  - id: web
    org: o
    platform: custom
    role: inlet
    accessToken: secret-123456
    info: { sendResponseApi: 'http://127.0.0.1:9/send' }
    bot: bot
    outlet: desk
    handoff: { keywords: [human], pendingTimeoutSecs: 60 }
  - id: lone
    org: o
    platform: custom
    role: inlet
    accessToken: secret-123456
    info: { sendResponseApi: 'http://127.0.0.1:9/send' }
    bot: bot
  - id: bot
    org: o
    platform: webhook-bot
    role: bot
    accessToken: secret-123456
    info: { url: 'http://127.0.0.1:9/bot' }
  - id: desk
    org: o
    platform: custom
    role: outlet
    accessToken: secret-123456
    info: { livechatApi: 'http://127.0.0.1:9/l', relayResponseApi: 'http://127.0.0.1:9/r' }
    liveChat: { endText: Bye from the desk }
";

    struct World {
        channels: Channels,
        conversation: Option<OpenConversation>,
        source: String,
        named: String,
        profile: Value,
        epoch: i32,
        bot_down: bool,
        csat_pending: Option<Uuid>,
        coalesce_ms: u64,
        desk_closed: Option<DeskClosed>,
        reopen: Option<(Uuid, String)>,
        watcher: Option<String>,
    }

    const CONV: Uuid = Uuid::from_u128(7);

    fn world(state: Option<OpenState>) -> World {
        World {
            channels: Channels::parse(CHANNELS).unwrap(),
            conversation: state.map(|state| OpenConversation {
                id: CONV,
                state,
                outlet_channel_id: "desk".into(),
                agent_joined: false,
                trouble_told: false,
                taken_over: false,
                agent_name: String::new(),
                requeues: 0,
                replied: false,
                in_state_secs: 0.0,
                transferred_from: None,
            }),
            source: "web".into(),
            named: String::new(),
            profile: json!({}),
            epoch: 0,
            bot_down: false,
            csat_pending: None,
            coalesce_ms: 0,
            desk_closed: None,
            reopen: None,
            watcher: None,
        }
    }

    impl World {
        fn decide(&self, inlet: &str, event: Event<'_>) -> Vec<Step> {
            let inlet = self.channels.get(inlet).unwrap();
            let facts = Facts {
                inlet,
                conversation: self.conversation.as_ref(),
                outlet: self.channels.get("desk").map(|c| &**c),
                handoff_to: inlet.outlet.as_deref(),
                source: &self.source,
                named_conversation: &self.named,
                profile: &self.profile,
                epoch: self.epoch,
                bot_down: self.bot_down,
                csat_pending: self.csat_pending,
                coalesce_ms: self.coalesce_ms,
                desk_closed: self.desk_closed.clone(),
                reopen: self.reopen.clone(),
                watcher: self.watcher.as_deref(),
            };
            decide(&facts, event)
        }
    }

    fn text(t: &str) -> Content {
        text_content(t)
    }

    fn sends(steps: &[Step]) -> Vec<&Command> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Send(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn system_events(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Record { line, .. } if line.author == Author::System => {
                    let v = handoff_platforms::content::content_to_response(&line.content);
                    Some(v["event"].as_str().unwrap_or_default().to_string())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_customer_message_with_no_human_involved_goes_to_the_bot() {
        let steps = world(None).decide("web", Event::Inbound(&text("hello")));
        assert!(
            matches!(&steps[0], Step::Record { line, first: true } if line.author == Author::Customer && !line.held)
        );
        assert!(
            matches!(sends(&steps)[..], [Command::ToBot { bot, live: false, .. }] if bot == "bot")
        );
    }

    #[test]
    fn a_customer_message_while_pending_is_held_and_goes_nowhere() {
        let steps = world(Some(OpenState::Pending)).decide("web", Event::Inbound(&text("hi")));
        assert_eq!(steps.len(), 1);
        assert!(
            matches!(&steps[0], Step::Record { line, .. } if line.held && line.conversation == Some(CONV))
        );
    }

    #[test]
    fn a_customer_message_while_live_is_relayed_and_keeps_the_chat_alive() {
        let steps = world(Some(OpenState::Live)).decide("web", Event::Inbound(&text("hi")));
        assert!(steps.contains(&Step::Touch(CONV, Author::Customer)));
        assert!(
            matches!(sends(&steps)[..], [Command::Relay { outlet, live: true, .. }] if outlet == "desk")
        );
    }

    #[test]
    fn a_handoff_keyword_opens_a_handoff_to_the_inlets_outlet() {
        let steps = world(None).decide("web", Event::Inbound(&text(" Human ")));
        assert!(
            matches!(&steps[1], Step::OpenHandoff { outlet, details } if outlet == "desk" && details.trigger == "keyword")
        );
        assert!(
            !sends(&steps)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. })),
            "the bot does not see it"
        );
    }

    #[test]
    fn a_handoff_without_an_outlet_tells_the_bot_it_failed() {
        let details = HandoffDetails::default();
        let steps = world(None).decide("lone", Event::HandoffRequested(details));
        assert_eq!(system_events(&steps), ["HANDOFF_FAILED", "NOTICE"]);
        assert!(
            matches!(sends(&steps)[..], [Command::ToMember { .. }, Command::ToBot { send, .. }] if matches!(&send.reason, Some(Reason::HandoffFailed(t)) if t.reason == "no_outlet"))
        );
    }

    #[test]
    fn a_second_handoff_while_one_is_open_is_ignored() {
        let steps = world(Some(OpenState::Pending))
            .decide("web", Event::HandoffRequested(HandoffDetails::default()));
        assert!(matches!(steps[..], [Step::Ignore(_)]));
    }

    #[test]
    fn an_acceptance_makes_the_chat_live_and_relays_what_was_held() {
        let mut w = world(Some(OpenState::Pending));
        w.named = CONV.to_string();
        let steps = w.decide(
            "web",
            Event::HandoffAccepted {
                external_id: "T-1",
                agent: "",
            },
        );
        assert!(
            matches!(&steps[0], Step::BecomeLive { conversation, external_id } if *conversation == CONV && external_id == "T-1")
        );
        assert_eq!(system_events(&steps), ["LIVE_CHAT_STARTED", "NOTICE"]);
        assert!(
            matches!(steps.last(), Some(Step::ReleaseHeld { to: Release::Outlet(o), .. }) if o == "desk")
        );
    }

    #[test]
    fn a_late_acceptance_of_another_conversation_is_ignored() {
        let mut w = world(Some(OpenState::Pending));
        w.named = Uuid::from_u128(8).to_string();
        let steps = w.decide(
            "web",
            Event::HandoffAccepted {
                external_id: "T-1",
                agent: "",
            },
        );
        assert!(matches!(steps[..], [Step::Ignore(_)]));
    }

    #[test]
    fn a_failed_livechat_returns_the_member_and_the_held_messages_to_the_bot() {
        let mut w = world(Some(OpenState::Pending));
        w.named = CONV.to_string();
        let steps = w.decide(
            "web",
            Event::HandoffFailed {
                error: json!({"reason": "livechat_failed"}),
            },
        );
        assert!(
            matches!(&steps[0], Step::Close { from: OpenState::Pending, reason, .. } if reason == "livechat_failed")
        );
        assert_eq!(system_events(&steps), ["HANDOFF_FAILED", "NOTICE"]);
        assert!(
            matches!(steps.last(), Some(Step::ReleaseHeld { to: Release::Bot(Some(b)), .. }) if b == "bot")
        );
    }

    #[test]
    fn the_agents_end_command_closes_the_chat_and_hands_the_member_back() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        let steps = w.decide(
            "web",
            Event::AgentCommand {
                content: &text("DONE"),
                reference: "",
            },
        );
        assert!(
            matches!(&steps[1], Step::Close { from: OpenState::Live, reason, .. } if reason == "agent_ended")
        );
        let sent = sends(&steps);
        assert!(
            matches!(sent[0], Command::ToMember { content, live: false, .. } if *content == text("Bye from the desk"))
        );
        assert!(
            matches!(sent[1], Command::ToBot { send, .. } if matches!(&send.reason, Some(Reason::LiveChatEnded(_))))
        );
    }

    #[test]
    fn any_other_agent_command_goes_to_the_bot_naming_the_conversation() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        let steps = w.decide(
            "web",
            Event::AgentCommand {
                content: &text("/refund"),
                reference: "",
            },
        );
        assert!(
            matches!(sends(&steps)[..], [Command::ToBot { live: true, send, .. }] if send.reason == Some(Reason::AgentConversationId(CONV.to_string())))
        );
    }

    #[test]
    fn the_bots_answer_to_an_agent_command_goes_to_the_live_chat() {
        let mut w = world(Some(OpenState::Live));
        w.source = "bot".into();
        let reply = BotReply {
            responses: vec![text("order #12 refunded")],
            agent_conversation_id: "ref-1".into(),
            ..Default::default()
        };
        let steps = w.decide("web", Event::BotReply(&reply));
        assert!(
            matches!(sends(&steps)[..], [Command::ToOutlet { reference, .. }] if reference == "ref-1")
        );
    }

    #[test]
    fn an_agent_message_outside_a_live_chat_is_ignored() {
        let steps = world(Some(OpenState::Pending)).decide(
            "web",
            Event::AgentMessage {
                content: &text("hi"),
                agent: "",
            },
        );
        assert!(matches!(steps[..], [Step::Ignore(_)]));
    }

    #[test]
    fn a_pending_timeout_first_checks_the_handoff_is_still_overdue() {
        let mut w = world(Some(OpenState::Pending));
        w.named = CONV.to_string();
        let steps = w.decide(
            "web",
            Event::Timeout {
                state: "pending",
                reason: "pending_timeout",
            },
        );
        assert!(matches!(&steps[0], Step::IfOverdue { limit_secs: 60, .. }));
        assert!(matches!(&steps[1], Step::Close { reason, .. } if reason == "pending_timeout"));
    }

    #[test]
    fn a_live_idle_timeout_tells_the_agent_and_the_customer() {
        let mut w = world(Some(OpenState::Live));
        w.named = CONV.to_string();
        let steps = w.decide(
            "web",
            Event::Timeout {
                state: "live",
                reason: "idle",
            },
        );
        let sent = sends(&steps);
        assert!(matches!(sent[0], Command::Relay { live: false, .. }));
        assert!(matches!(sent[1], Command::ToMember { .. }));
        assert_eq!(system_events(&steps), ["LIVE_CHAT_ENDED", "NOTICE"]);
    }

    #[test]
    fn a_customer_leaving_a_live_chat_tells_the_agent_and_sends_the_customer_nothing() {
        let steps = world(Some(OpenState::Live)).decide("web", Event::CustomerLeft);
        let sent = sends(&steps);
        assert!(matches!(sent[0], Command::Relay { live: false, .. }));
        assert!(
            !sent.iter().any(|c| matches!(c, Command::ToMember { .. })),
            "{sent:?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "customer_left"))
        );
        assert!(steps.iter().any(|s| matches!(
            s,
            Step::ReleaseHeld {
                to: Release::Bot(None),
                ..
            }
        )));
    }

    #[test]
    fn a_bot_closing_a_live_chat_closes_it_as_bot_closed() {
        let mut w = world(Some(OpenState::Live));
        w.source = "bot".into();
        let reply = BotReply {
            close: true,
            ..Default::default()
        };
        let steps = w.decide("web", Event::BotReply(&reply));
        assert!(matches!(&steps[0], Step::Close { reason, .. } if reason == "bot_closed"));
    }

    #[test]
    fn a_bot_reply_from_a_channel_other_than_the_members_bot_is_refused_and_sends_nothing() {
        let mut w = world(None);
        w.source = "other-orgs-bot".into();
        let reply = BotReply {
            responses: vec![text("injected")],
            handoff: Some(HandoffDetails::default()),
            ..Default::default()
        };
        let steps = w.decide("web", Event::BotReply(&reply));
        assert_eq!(system_events(&steps), ["REFUSED"]);
        assert!(sends(&steps).is_empty(), "{steps:?}");
        assert!(
            !steps.iter().any(|s| matches!(s, Step::OpenHandoff { .. })),
            "{steps:?}"
        );
    }

    #[test]
    fn an_agent_message_or_command_from_an_outlet_not_holding_the_chat_is_refused() {
        let mut w = world(Some(OpenState::Live));
        w.source = "another-desk".into();
        let message = w.decide(
            "web",
            Event::AgentMessage {
                content: &text("hi"),
                agent: "",
            },
        );
        let command = w.decide(
            "web",
            Event::AgentCommand {
                content: &text("done"),
                reference: "",
            },
        );
        for steps in [message, command] {
            assert_eq!(system_events(&steps), ["REFUSED"]);
            assert!(sends(&steps).is_empty(), "{steps:?}");
            assert!(
                !steps.iter().any(|s| matches!(s, Step::Close { .. })),
                "{steps:?}"
            );
        }
    }

    fn content_text(content: &Content) -> &str {
        match &content.kind {
            Some(content::Kind::Text(t)) => &t.text,
            _ => "",
        }
    }

    fn texts_to_member(steps: &[Step]) -> Vec<String> {
        sends(steps)
            .into_iter()
            .filter_map(|c| match c {
                Command::ToMember { content, .. } => match &content.kind {
                    Some(content::Kind::Text(t)) => Some(t.text.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    fn answer(epoch: Option<u32>) -> BotReply {
        BotReply {
            responses: vec![text("You said: hi")],
            epoch,
            ..Default::default()
        }
    }

    #[test]
    fn a_keyword_handoff_tells_the_customer_after_opening_it() {
        let steps = world(None).decide("web", Event::Inbound(&text("human")));
        let open = steps
            .iter()
            .position(|s| matches!(s, Step::OpenHandoff { .. }))
            .unwrap();
        let notice = steps
            .iter()
            .position(|s| matches!(s, Step::Send(Command::ToMember { .. })))
            .unwrap();
        assert!(
            open < notice,
            "sent only once the handoff opened: {steps:?}"
        );
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::HandoffRequested.default_text()]
        );
        assert_eq!(system_events(&steps), ["NOTICE"]);
    }

    #[test]
    fn an_acceptance_naming_the_agent_has_them_join_and_one_without_queues_the_customer() {
        let mut w = world(Some(OpenState::Pending));
        w.named = CONV.to_string();
        let named = w.decide(
            "web",
            Event::HandoffAccepted {
                external_id: "T-1",
                agent: "Bob",
            },
        );
        assert!(named.contains(&Step::AgentJoined {
            conversation: CONV,
            name: "Bob".into()
        }));
        assert_eq!(texts_to_member(&named), ["Bob has joined the chat."]);
        let anonymous = w.decide(
            "web",
            Event::HandoffAccepted {
                external_id: "T-1",
                agent: "",
            },
        );
        assert_eq!(
            texts_to_member(&anonymous),
            [NoticeKind::Queued.default_text()]
        );
    }

    #[test]
    fn the_first_agent_message_announces_the_agent_once() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        let first = w.decide(
            "web",
            Event::AgentMessage {
                content: &text("hello"),
                agent: "",
            },
        );
        assert_eq!(
            texts_to_member(&first),
            ["An agent has joined the chat.", "hello"]
        );
        w.conversation.as_mut().unwrap().agent_joined = true;
        let later = w.decide(
            "web",
            Event::AgentMessage {
                content: &text("more"),
                agent: "Alice",
            },
        );
        assert_eq!(texts_to_member(&later), ["more"]);
        assert!(!later.iter().any(|s| matches!(s, Step::AgentJoined { .. })));
    }

    #[test]
    fn a_silenced_notice_sends_and_records_nothing() {
        let yaml = CHANNELS.replace(
            "handoff: { keywords: [human], pendingTimeoutSecs: 60 }",
            "handoff: { keywords: [human], pendingTimeoutSecs: 60 }\n    notices: { handoffRequested: ~ }",
        );
        let mut w = world(None);
        w.channels = Channels::parse(&yaml).unwrap();
        let steps = w.decide("web", Event::Inbound(&text("human")));
        assert!(texts_to_member(&steps).is_empty(), "{steps:?}");
        assert!(system_events(&steps).is_empty());
    }

    #[test]
    fn a_failed_handoff_tells_the_customer_nobody_is_available() {
        let mut w = world(Some(OpenState::Pending));
        w.named = CONV.to_string();
        let steps = w.decide(
            "web",
            Event::HandoffFailed {
                error: json!({"reason": "livechat_failed"}),
            },
        );
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::Unavailable.default_text()]
        );
    }

    #[test]
    fn a_bot_answer_while_pending_is_withheld_and_held_for_the_desk() {
        let mut w = world(Some(OpenState::Pending));
        w.source = "bot".into();
        // The same epoch: a handoff not yet live moves nothing but who owns the member.
        let steps = w.decide("web", Event::BotReply(&answer(Some(0))));
        assert!(sends(&steps).is_empty(), "{steps:?}");
        assert!(matches!(
            &steps[..],
            [Step::Record { line, .. }] if line.withheld && line.held && line.author == Author::Bot
        ));
    }

    #[test]
    fn a_bot_answer_while_live_goes_to_the_desk_as_context_not_to_the_customer() {
        let mut w = world(Some(OpenState::Live));
        w.source = "bot".into();
        w.epoch = 1;
        // An answer that came on its own (no epoch: Selarti) while a human owns the chat.
        let steps = w.decide("web", Event::BotReply(&answer(None)));
        assert!(
            matches!(sends(&steps)[..], [Command::Context { outlet, conversation, .. }] if outlet == "desk" && *conversation == CONV)
        );
    }

    #[test]
    fn a_bot_answer_asked_for_while_live_is_the_bots_to_give() {
        // E.g. the bot's live-chat tree answering `relayMessageError`.
        let mut w = world(Some(OpenState::Live));
        w.source = "bot".into();
        w.epoch = 1;
        let steps = w.decide("web", Event::BotReply(&answer(Some(1))));
        assert_eq!(texts_to_member(&steps), ["You said: hi"]);
    }

    #[test]
    fn an_answer_that_outlived_a_live_chat_is_withheld_and_its_handoff_ignored() {
        let mut w = world(None);
        w.source = "bot".into();
        w.epoch = 2;
        let mut reply = answer(Some(0));
        reply.handoff = Some(HandoffDetails::default());
        let steps = w.decide("web", Event::BotReply(&reply));
        assert!(sends(&steps).is_empty(), "{steps:?}");
        assert!(!steps.iter().any(|s| matches!(s, Step::OpenHandoff { .. })));
        assert!(matches!(&steps[0], Step::Record { line, .. } if line.withheld && !line.held));
    }

    #[test]
    fn a_current_answer_with_no_human_involved_reaches_the_customer() {
        let mut w = world(None);
        w.source = "bot".into();
        w.epoch = 2;
        assert_eq!(
            texts_to_member(&w.decide("web", Event::BotReply(&answer(Some(2))))),
            ["You said: hi"]
        );
        assert_eq!(
            texts_to_member(&w.decide("web", Event::BotReply(&answer(None)))),
            ["You said: hi"]
        );
    }

    fn stalled(w: &World) -> Vec<Step> {
        w.decide(
            "web",
            Event::DeliveryStalled {
                content: &text("is anyone there?"),
                error: json!({"reason": "HTTP 500", "status": 500}),
            },
        )
    }

    #[test]
    fn a_stalled_relay_tells_the_bot_and_the_customer_once_per_conversation() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        let steps = stalled(&w);
        assert!(steps.contains(&Step::TroubleTold(CONV)));
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::Trouble.default_text()]
        );
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::ToBot { send, .. } if matches!(&send.reason, Some(Reason::RelayFailed(t)) if t.status == Some(500)))));
        w.conversation.as_mut().unwrap().trouble_told = true;
        let again = stalled(&w);
        assert!(texts_to_member(&again).is_empty(), "{again:?}");
    }

    #[test]
    fn a_relay_failing_for_good_after_it_stalled_does_not_tell_the_bot_twice() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        let failed = |told| {
            w.decide(
                "web",
                Event::RelayFailed {
                    content: &text("x"),
                    error: json!({"reason": "HTTP 500"}),
                    told,
                },
            )
        };
        assert!(sends(&failed(true)).is_empty());
        assert_eq!(sends(&failed(false)).len(), 1);
    }

    #[test]
    fn a_bot_found_down_notifies_the_customer_once_until_it_answers_again() {
        let mut w = world(None);
        w.source = "bot".into();
        let steps = stalled(&w);
        assert!(steps.contains(&Step::BotDown(true)));
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::Trouble.default_text()]
        );
        w.bot_down = true;
        assert!(matches!(stalled(&w)[..], [Step::Ignore(_)]));
        let back = w.decide("web", Event::BotReply(&answer(Some(0))));
        assert!(back.contains(&Step::BotDown(false)));
        assert_eq!(texts_to_member(&back), ["You said: hi"]);
    }

    #[test]
    fn a_bot_found_down_hands_the_customer_over_where_the_inlet_says_so() {
        let yaml = CHANNELS.replace(
            "handoff: { keywords: [human], pendingTimeoutSecs: 60 }",
            "handoff: { keywords: [human], pendingTimeoutSecs: 60, onBotDown: handoff }",
        );
        let mut w = world(None);
        w.channels = Channels::parse(&yaml).unwrap();
        w.source = "bot".into();
        let steps = stalled(&w);
        assert!(
            steps.iter().any(|s| matches!(s, Step::OpenHandoff { details, .. } if details.trigger == "bot_down" && details.summary.contains("HTTP 500"))),
            "{steps:?}"
        );
        // While a human has the member, a bot that is down changes nothing for them.
        let mut live = world(Some(OpenState::Live));
        live.channels = Channels::parse(&yaml).unwrap();
        live.source = "bot".into();
        let steps = stalled(&live);
        assert!(sends(&steps).is_empty(), "{steps:?}");
        assert!(steps.contains(&Step::BotDown(true)));
    }

    fn with_rules(extra_handoff: &str, extra: &str) -> World {
        let yaml = CHANNELS.replace(
            "handoff: { keywords: [human], pendingTimeoutSecs: 60 }",
            &format!(
                "handoff: {{ keywords: [human], pendingTimeoutSecs: 60{extra_handoff} }}{extra}"
            ),
        );
        let mut w = world(None);
        w.channels = Channels::parse(&yaml).unwrap();
        w
    }

    #[test]
    fn a_cancel_word_while_waiting_closes_the_handoff_tells_the_desk_and_gives_the_bot_back() {
        let mut w = with_rules(", cancelKeywords: [cancel]", "");
        w.conversation = world(Some(OpenState::Pending)).conversation;
        let steps = w.decide("web", Event::Inbound(&text("Cancel")));
        assert!(
            matches!(&steps[0], Step::Record { line, first: true } if !line.held),
            "the word itself is not held for the desk"
        );
        assert!(steps.iter().any(|s| matches!(s, Step::Close { from: OpenState::Pending, reason, .. } if reason == "customer_cancelled")));
        let sent = sends(&steps);
        assert!(
            matches!(sent[0], Command::Relay { content, .. } if content.raw_json.contains("HANDOFF_CANCELLED"))
        );
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::HandoffCancelled.default_text()]
        );
        assert!(matches!(
            steps.last(),
            Some(Step::ReleaseHeld {
                to: Release::Bot(Some(_)),
                ..
            })
        ));
        // The same word in a live chat is just a message for the agent.
        w.conversation = world(Some(OpenState::Live)).conversation;
        let live = w.decide("web", Event::Inbound(&text("Cancel")));
        assert!(matches!(
            sends(&live)[..],
            [Command::Relay { live: true, .. }]
        ));
    }

    #[test]
    fn an_end_word_in_a_live_chat_ends_it_for_the_desk_and_the_customer() {
        let mut w = with_rules(", endKeywords: [end chat]", "");
        w.conversation = world(Some(OpenState::Live)).conversation;
        let steps = w.decide("web", Event::Inbound(&text("end chat")));
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "customer_ended"))
        );
        assert!(
            matches!(sends(&steps)[0], Command::Relay { content, live: false, .. } if content.raw_json.contains("LIVE_CHAT_ENDED"))
        );
        assert_eq!(texts_to_member(&steps), ["Bye from the desk"]);
    }

    #[test]
    fn a_live_chat_ending_asks_the_rating_and_the_answer_is_recorded_not_sent_to_the_bot() {
        let mut w = with_rules("", "\n    csat: { replies: [good, bad] }");
        w.conversation = world(Some(OpenState::Live)).conversation;
        w.named = CONV.to_string();
        let steps = w.decide("web", Event::OperatorClose { reason: "admin" });
        assert!(steps.contains(&Step::CsatAsked {
            conversation: CONV,
            window_secs: 600
        }));
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::ToMember { content, .. } if matches!(&content.kind, Some(content::Kind::QuickReplies(q)) if q.options.len() == 2))));

        let mut after = with_rules("", "\n    csat: { replies: [good, bad] }");
        after.csat_pending = Some(CONV);
        let steps = after.decide("web", Event::Inbound(&text("Good")));
        assert!(steps.contains(&Step::CsatAnswered {
            conversation: CONV,
            answer: "good".into()
        }));
        assert!(
            !sends(&steps)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. }))
        );
        assert_eq!(texts_to_member(&steps), ["Thank you for your feedback!"]);
        let other = after.decide("web", Event::Inbound(&text("hello")));
        assert!(matches!(sends(&other)[..], [Command::ToBot { .. }]));
    }

    #[test]
    fn a_coalescing_bot_gets_a_burst_when_its_turn_is_due_and_a_handoff_word_acts_at_once() {
        let mut w = world(None);
        w.coalesce_ms = 800;
        let steps = w.decide("web", Event::Inbound(&text("hi")));
        assert!(
            matches!(&steps[0], Step::Record { line, .. } if line.held && line.conversation.is_none())
        );
        assert!(steps.contains(&Step::ScheduleTurn { after_ms: 800 }));
        assert!(sends(&steps).is_empty());
        let keyword = w.decide("web", Event::Inbound(&text("human")));
        assert!(
            keyword
                .iter()
                .any(|s| matches!(s, Step::OpenHandoff { .. }))
        );
        assert_eq!(w.decide("web", Event::TurnDue), [Step::ReleaseTurn]);
        let pending = world(Some(OpenState::Pending));
        assert!(matches!(
            pending.decide("web", Event::TurnDue)[..],
            [Step::Ignore(_)]
        ));
    }

    #[test]
    fn an_agents_first_message_after_a_takeover_silences_the_bot_and_announces_the_agent() {
        let mut w = world(Some(OpenState::Live));
        w.source = "desk".into();
        {
            let c = w.conversation.as_mut().unwrap();
            c.taken_over = true;
            c.agent_name = "Ann".into();
        }
        let steps = w.decide(
            "web",
            Event::AgentMessage {
                content: &text("Hi, I saw you were stuck"),
                agent: "",
            },
        );
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::ToBot { live: true, send, .. } if matches!(&send.reason, Some(Reason::LiveChatStarted(t)) if t.reason == "agent_takeover"))));
        assert_eq!(
            texts_to_member(&steps),
            ["Ann has joined the chat.", "Hi, I saw you were stuck"]
        );
        let command = w.decide(
            "web",
            Event::AgentCommand {
                content: &text("takeover"),
                reference: "",
            },
        );
        assert!(
            sends(&command)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. }))
        );
        w.conversation.as_mut().unwrap().agent_joined = true;
        let again = w.decide(
            "web",
            Event::AgentCommand {
                content: &text("takeover"),
                reference: "",
            },
        );
        assert!(sends(&again).is_empty(), "{again:?}");
    }

    #[test]
    fn outside_hours_a_handoff_calls_no_desk_and_says_when_it_opens() {
        let mut w = world(None);
        w.desk_closed = Some(DeskClosed {
            next_open_at: "2026-12-07T09:00:00+01:00".into(),
            next_open_text: "Monday 09:00 (Europe/Berlin)".into(),
            offline_ticket: false,
            switched_off: false,
        });
        let steps = w.decide("web", Event::Inbound(&text("human")));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::OpenHandoff { .. } | Step::OfflineTicket { .. }))
        );
        assert_eq!(
            texts_to_member(&steps),
            [
                "Our team is offline right now and back Monday 09:00 (Europe/Berlin). Our assistant will keep helping you."
            ]
        );
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::ToBot { send, .. } if matches!(&send.reason, Some(Reason::HandoffFailed(t)) if t.reason == "outside_hours" && t.next_open_at == "2026-12-07T09:00:00+01:00"))));

        w.desk_closed.as_mut().unwrap().offline_ticket = true;
        let steps = w.decide("web", Event::Inbound(&text("human")));
        assert!(steps.iter().any(|s| matches!(s, Step::OfflineTicket { outlet, details } if outlet == "desk" && details.meta_json.contains(r#""offline":true"#))));
    }

    #[test]
    fn an_outlet_switched_unavailable_calls_no_desk_and_fails_the_handoff_as_unavailable() {
        let mut w = world(None);
        w.desk_closed = Some(DeskClosed {
            switched_off: true,
            ..Default::default()
        });
        let steps = w.decide("web", Event::Inbound(&text("human")));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::OpenHandoff { .. } | Step::OfflineTicket { .. }))
        );
        assert_eq!(
            texts_to_member(&steps),
            ["No one from our team is available right now. Our assistant will keep helping you."]
        );
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::ToBot { send, .. } if matches!(&send.reason, Some(Reason::HandoffFailed(t)) if t.reason == "unavailable"))));
    }

    fn timer(w: &World, reason: &'static str) -> Vec<Step> {
        w.decide(
            "web",
            Event::Timeout {
                state: "live",
                reason,
            },
        )
    }

    #[test]
    fn live_chat_timers_check_again_then_tell_the_customer_or_requeue_or_give_up() {
        let yaml = CHANNELS.replace(
            "liveChat: { endText: Bye from the desk }",
            "liveChat: { endText: Bye from the desk, firstReplySecs: 5, requeueSecs: 9, maxRequeues: 1, agentIdleSecs: 7, agentIdleGraceSecs: 3 }",
        );
        let mut w = world(Some(OpenState::Live));
        w.channels = Channels::parse(&yaml).unwrap();
        w.named = CONV.to_string();

        let waiting = timer(&w, "first_reply");
        assert_eq!(
            waiting[0],
            Step::IfTimer {
                conversation: CONV,
                timer: Timer::FirstReply,
                limit_secs: 5
            }
        );
        assert!(waiting.contains(&Step::TimerTold {
            conversation: CONV,
            idle: false
        }));
        assert_eq!(
            texts_to_member(&waiting),
            [NoticeKind::StillWaiting.default_text()]
        );

        let requeue = timer(&w, "no_reply");
        assert!(
            requeue
                .iter()
                .any(|s| matches!(s, Step::Requeue { outlet, .. } if outlet == "desk"))
        );
        w.conversation.as_mut().unwrap().requeues = 1;
        let give_up = timer(&w, "no_reply");
        assert!(
            give_up
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "no_agent_reply"))
        );
        assert_eq!(
            texts_to_member(&give_up),
            [NoticeKind::Unavailable.default_text()]
        );

        let idle = timer(&w, "agent_idle");
        assert_eq!(
            texts_to_member(&idle),
            [NoticeKind::AgentIdle.default_text()]
        );
        let close = timer(&w, "agent_idle_close");
        assert!(matches!(
            close[0],
            Step::IfTimer {
                timer: Timer::AgentIdleClose,
                limit_secs: 3,
                ..
            }
        ));
        assert!(
            close
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "agent_idle_close"))
        );

        // A timer for a conversation that is no longer live does nothing.
        let mut moved = world(Some(OpenState::Pending));
        moved.named = CONV.to_string();
        assert!(matches!(
            timer(&moved, "first_reply")[..],
            [Step::Ignore(_)]
        ));
    }

    #[test]
    fn a_customer_back_within_the_window_goes_into_the_previous_chat_where_the_outlet_reopens() {
        let mut w = world(None);
        let previous = Uuid::from_u128(9);
        w.reopen = Some((previous, "desk".into()));
        let steps = w.decide("web", Event::Inbound(&text("me again")));
        assert!(
            matches!(&steps[0], Step::Record { line, first: true } if line.conversation == Some(previous))
        );
        assert!(steps.contains(&Step::Reopen {
            conversation: previous
        }));
        let sent = sends(&steps);
        assert!(sent.iter().any(|c| matches!(c, Command::Relay { conversation, live: true, .. } if *conversation == previous)));
        assert!(sent.iter().any(|c| matches!(c, Command::ToBot { send, .. } if matches!(&send.reason, Some(Reason::LiveChatStarted(t)) if t.reason == "customer_returned"))));
        assert!(
            !sent
                .iter()
                .any(|c| matches!(c, Command::ToBot { send, .. } if send.reason.is_none()))
        );
    }

    #[test]
    fn a_transfer_to_another_outlet_of_the_org_closes_this_chat_and_hands_over_there() {
        let yaml = format!(
            "{CHANNELS}  - id: desk-b\n    org: o\n    platform: custom\n    role: outlet\n    accessToken: secret-123456\n    info: {{ livechatApi: 'http://127.0.0.1:9/l', relayResponseApi: 'http://127.0.0.1:9/r' }}\n"
        );
        let mut w = world(Some(OpenState::Live));
        w.channels = Channels::parse(&yaml).unwrap();
        w.source = "desk".into();
        let to_b = w.channels.get("desk-b").cloned();
        let steps = w.decide(
            "web",
            Event::Transfer {
                content: &text("transfer desk-b billing"),
                to: "desk-b",
                target: to_b.as_deref(),
                group: "billing",
            },
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "transferred"))
        );
        assert!(steps.iter().any(|s| matches!(s, Step::OpenHandoff { outlet, details } if outlet == "desk-b" && details.group_name == "billing" && details.trigger == "transfer")));
        assert_eq!(
            texts_to_member(&steps),
            [NoticeKind::Transferred.default_text()]
        );

        // To itself, or to a channel that is not an outlet: the agent is told, nothing moves.
        for (to, target) in [
            ("desk", w.channels.get("desk").cloned()),
            ("bot", w.channels.get("bot").cloned()),
        ] {
            let refused = w.decide(
                "web",
                Event::Transfer {
                    content: &text("transfer x"),
                    to,
                    target: target.as_deref(),
                    group: "",
                },
            );
            assert!(
                !refused
                    .iter()
                    .any(|s| matches!(s, Step::Close { .. } | Step::OpenHandoff { .. }))
            );
            assert!(sends(&refused).iter().any(|c| matches!(c, Command::Relay { content, .. } if content.raw_json.contains("TRANSFER_FAILED"))));
        }
    }

    #[test]
    fn a_transfer_the_new_desk_refuses_takes_the_customer_back_to_the_first_desk_not_the_bot() {
        const FIRST: Uuid = Uuid::from_u128(3);
        let mut w = world(Some(OpenState::Pending));
        if let Some(c) = &mut w.conversation {
            c.transferred_from = Some((FIRST, "desk-a".into()));
        }
        w.source = "desk".into();
        w.named = CONV.to_string();

        let steps = w.decide(
            "web",
            Event::HandoffFailed {
                error: json!({"reason": "http 400", "message": "refused"}),
            },
        );

        assert!(steps.contains(&Step::Reopen {
            conversation: FIRST
        }));
        assert!(sends(&steps).iter().any(|c| matches!(c, Command::Relay { outlet, conversation, content, .. } if outlet == "desk-a" && *conversation == FIRST && content.raw_json.contains("TRANSFER_FAILED"))));
        assert!(steps.iter().any(|s| matches!(s, Step::ReleaseHeld { conversation, to: Release::Chat { outlet, conversation: into } } if *conversation == CONV && outlet == "desk-a" && *into == FIRST)));
        assert!(
            !sends(&steps)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. })),
            "the bot is not involved"
        );
        assert!(
            texts_to_member(&steps).is_empty(),
            "nobody tells the customer no agent is there"
        );

        // Accepted by the new desk once and requeued since: the first desk is not asked back.
        if let Some(c) = &mut w.conversation {
            c.requeues = 1;
        }
        let later = w.decide(
            "web",
            Event::HandoffFailed {
                error: json!({"reason": "http 400", "message": "refused"}),
            },
        );
        assert!(!later.iter().any(|s| matches!(s, Step::Reopen { .. })));
        assert!(
            sends(&later)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. }))
        );
    }

    #[test]
    fn a_zendesk_visitors_live_chat_can_be_transferred_to_a_department_of_that_zendesk() {
        let yaml = format!(
            "{CHANNELS}  - id: zd\n    org: o\n    platform: zendesk\n    role: inlet\n    info: {{ accessToken: tok }}\n    bot: bot\n    outlet: desk\n"
        );
        let mut w = world(Some(OpenState::Live));
        w.channels = Channels::parse(&yaml).unwrap();
        w.source = "desk".into();
        let zendesk = w.channels.get("zd").cloned();
        let steps = w.decide(
            "zd",
            Event::Transfer {
                content: &text("transfer Billing"),
                to: "Billing",
                target: zendesk.as_deref(),
                group: "Billing",
            },
        );
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Close { reason, .. } if reason == "transferred"))
        );
        assert!(steps.iter().any(|s| matches!(s, Step::OpenHandoff { outlet, details } if outlet == "zd" && details.group_name == "Billing" && details.trigger == "transfer")));

        // A web customer has no Zendesk to move into: the agent is told, nothing moves.
        let refused = w.decide(
            "web",
            Event::Transfer {
                content: &text("transfer Billing"),
                to: "Billing",
                target: zendesk.as_deref(),
                group: "Billing",
            },
        );
        assert!(
            !refused
                .iter()
                .any(|s| matches!(s, Step::Close { .. } | Step::OpenHandoff { .. }))
        );
    }

    #[test]
    fn a_watched_bot_conversation_is_copied_to_the_desk_until_a_human_holds_it() {
        let mut w = world(None);
        w.watcher = Some("desk".into());
        let mirrored = |steps: &[Step]| -> Vec<(String, Author)> {
            sends(steps)
                .into_iter()
                .filter_map(|c| match c {
                    Command::Mirror {
                        outlet,
                        content,
                        from,
                    } => Some((format!("{outlet}: {}", content_text(content)), *from)),
                    _ => None,
                })
                .collect()
        };

        let asked = w.decide("web", Event::Inbound(&text("hello")));
        assert_eq!(
            mirrored(&asked),
            [("desk: hello".to_string(), Author::Customer)]
        );
        assert!(
            sends(&asked)
                .iter()
                .any(|c| matches!(c, Command::ToBot { .. }))
        );
        w.source = "bot".into();
        let answered = w.decide("web", Event::BotReply(&answer(None)));
        assert_eq!(
            mirrored(&answered),
            [("desk: You said: hi".to_string(), Author::Bot)]
        );

        // Not watched: nothing copied; live: the customer's messages are relayed instead.
        w.watcher = None;
        w.source = "web".into();
        assert!(mirrored(&w.decide("web", Event::Inbound(&text("hello")))).is_empty());
        let mut live = world(Some(OpenState::Live));
        live.watcher = Some("desk".into());
        let relayed = live.decide("web", Event::Inbound(&text("hello")));
        assert!(mirrored(&relayed).is_empty());
        assert!(
            sends(&relayed)
                .iter()
                .any(|c| matches!(c, Command::Relay { .. }))
        );
    }
}

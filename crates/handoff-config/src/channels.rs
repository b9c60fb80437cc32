use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Why a channels file was refused. Every message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot read channels file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("channels file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// A Stella-compatible custom platform (web chat, messenger, custom live chat).
    Custom,
    /// Any HTTP bot speaking Handoff's webhook-bot protocol.
    WebhookBot,
    Selarti,
    Zendesk,
    /// A URL that receives an org's conversation lifecycle events.
    Webhook,
    /// Handoff's own web chat: the widget and its visitors' connections, served by the
    /// inlet-gateway.
    Webchat,
}

impl Platform {
    /// The name the channels file uses, also the `platform` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Custom => "custom",
            Platform::WebhookBot => "webhook-bot",
            Platform::Selarti => "selarti",
            Platform::Zendesk => "zendesk",
            Platform::Webhook => "webhook",
            Platform::Webchat => "webchat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Inlet,
    Outlet,
    Bot,
    /// Hears of the org's conversations (`handoff_requested`, `accepted`, …).
    Subscriber,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inlet => "inlet",
            Role::Outlet => "outlet",
            Role::Bot => "bot",
            Role::Subscriber => "subscriber",
        }
    }
}

/// How members of an inlet are handed to humans, and how long each state may last.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HandoffRules {
    /// Customer texts that ask for a human (matched case-insensitively, whole message).
    pub keywords: Vec<String>,
    /// Postback payloads that ask for a human.
    pub postbacks: Vec<String>,
    /// Customer texts that cancel a handoff still waiting for the desk (whole message,
    /// any case): the desk is told, the bot takes the customer back.
    pub cancel_keywords: Vec<String>,
    /// Customer texts that end a live chat (or a waiting handoff), as Stella's
    /// `inletEndLiveChat`: the desk gets `LIVE_CHAT_ENDED`.
    pub end_keywords: Vec<String>,
    /// PENDING without an answer from the outlet this long returns the member to the bot.
    pub pending_timeout_secs: u64,
    /// LIVE without any message this long returns the member to the bot (Stella: 24 h).
    pub live_idle_timeout_secs: u64,
    /// How long a `chatHistoryURL` stays valid.
    pub history_link_ttl_secs: u64,
    /// A relay to the desk failing this long (still retried): the bot gets the message
    /// with `relayMessageError` and the customer the `trouble` notice, once. 0: only at the
    /// retry horizon.
    pub relay_notice_secs: u64,
    /// Calls to the bot failing this long (still retried): the bot counts as down, once
    /// until it answers again. 0: never.
    pub bot_down_secs: u64,
    /// What a bot that is down means for the customer.
    pub on_bot_down: OnBotDown,
}

/// What happens when an inlet's bot is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnBotDown {
    /// The customer gets the `trouble` notice; their messages wait for the bot.
    #[default]
    Notify,
    /// The customer is handed to a human (the reason in `assignmentDetails`).
    Handoff,
}

impl Default for HandoffRules {
    fn default() -> Self {
        Self {
            keywords: Vec::new(),
            postbacks: Vec::new(),
            cancel_keywords: Vec::new(),
            end_keywords: Vec::new(),
            pending_timeout_secs: 300,
            live_idle_timeout_secs: 24 * 3600,
            history_link_ttl_secs: 7 * 24 * 3600,
            relay_notice_secs: 10,
            bot_down_secs: 30,
            on_bot_down: OnBotDown::Notify,
        }
    }
}

/// Agent-side commands of an outlet.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LiveChatRules {
    /// The agent command that ends a live chat.
    pub end_command: String,
    /// What the customer is told when an agent ends the live chat (empty: nothing).
    pub end_text: String,
    /// Agents may take a member the bot holds (a `sendToInlet`, or `takeoverCommand`
    /// naming the member), without being asked.
    pub agent_takeover: bool,
    /// The agent command that takes a member over (`messageEvent.to` names the member).
    pub takeover_command: String,
    /// Agents watch the bot: the bot conversations of the inlets handing off here are
    /// copied to the Relay API marked `mode: "bot"` (read-only; an agent who answers takes
    /// the member over).
    pub monitor: bool,
    /// LIVE without a first agent message this long: the customer gets the
    /// `stillWaiting` notice, once per acceptance (0: never).
    pub first_reply_secs: u64,
    /// LIVE without a first agent message this long: the request goes to the desk again,
    /// or the customer back to the bot (`onNoReply`) (0: never).
    pub requeue_secs: u64,
    pub on_no_reply: OnNoReply,
    /// How many times a request goes to the desk again before the bot takes over.
    pub max_requeues: u32,
    /// The customer waiting this long since the agent last wrote: they get the
    /// `agentIdle` notice, and the chat closes `agentIdleGraceSecs` later unless the agent
    /// writes (0: never).
    pub agent_idle_secs: u64,
    pub agent_idle_grace_secs: u64,
    /// A new handoff within this long after a live chat with this outlet closed names it
    /// (`meta.previousConversationId`, `previousGroupName`, `previousAgentName`).
    pub return_window_secs: u64,
    /// Within that window, the customer's next message goes straight back into the
    /// previous live chat instead of to the bot.
    pub reopen: bool,
    /// The agent command that moves a live chat to another outlet of the org:
    /// `transfer <outlet id> [group]`.
    pub transfer_command: String,
}

/// What a live chat with no first agent reply in `requeueSecs` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoReply {
    /// The Livechat request is sent again (PENDING until accepted), up to `maxRequeues`
    /// times; then the bot takes the customer back.
    #[default]
    Requeue,
    /// The bot takes the customer back at once.
    Bot,
}

impl Default for LiveChatRules {
    fn default() -> Self {
        Self {
            end_command: "done".into(),
            end_text: "The agent has left the chat. You are talking to our assistant again.".into(),
            agent_takeover: true,
            takeover_command: "takeover".into(),
            monitor: false,
            first_reply_secs: 120,
            requeue_secs: 0,
            on_no_reply: OnNoReply::Requeue,
            max_requeues: 1,
            agent_idle_secs: 0,
            agent_idle_grace_secs: 120,
            return_window_secs: 3600,
            reopen: false,
            transfer_command: "transfer".into(),
        }
    }
}

/// One configured link to an external system.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Channel {
    pub id: String,
    pub org: String,
    pub platform: Platform,
    pub role: Role,
    /// What callers must present to this channel's inbound endpoint. Only a platform that
    /// never calls Handoff (Zendesk Chat, reached over its own WebSocket) goes without.
    #[serde(default = "no_token")]
    pub access_token: SecretString,
    /// When set, outbound calls for this channel carry a Standard Webhooks signature.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// The credential Handoff presents to the platform's own API (Selarti's API key).
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Platform endpoints and anything else the platform wants echoed in `channel.info`.
    #[serde(default)]
    pub info: Map<String, Value>,
    /// `info` as the document wrote it, `${ENV}` references unexpanded: what may be stored
    /// or shown to an operator (the expanded values are secrets of the deploy).
    #[serde(skip)]
    pub info_as_written: Map<String, Value>,
    /// Inlets: the bot that answers members while no human does.
    #[serde(default)]
    pub bot: Option<String>,
    /// Inlets: where members are handed when they ask for a human.
    #[serde(default)]
    pub outlet: Option<String>,
    #[serde(default)]
    pub handoff: HandoffRules,
    #[serde(default)]
    pub live_chat: LiveChatRules,
    /// Inlets: what the customer is told at each moment of a handoff.
    #[serde(default)]
    pub notices: crate::Notices,
    /// Inlets: a satisfaction question after each live chat (none when left out).
    #[serde(default)]
    pub csat: Option<CsatRules>,
    /// Bots: a customer's messages arriving within this many milliseconds of the first
    /// are given to the bot as one turn (0: each message is a turn).
    #[serde(default)]
    pub coalesce_ms: u64,
    /// Handoff targets (outlets, a Zendesk inlet with a department): when humans are
    /// there. None: always.
    #[serde(default)]
    pub hours: Option<crate::BusinessHours>,
}

/// The question a customer is asked when a live chat ends, and how it is answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CsatRules {
    pub question: String,
    /// The quick replies offered; the one picked (tapped, or typed as it reads) is the
    /// answer recorded.
    pub replies: Vec<String>,
    /// How long after the chat an answer counts; after it, messages go to the bot.
    pub window_secs: u64,
    /// Said to the customer after they answer (empty: nothing).
    pub thanks: String,
}

impl Default for CsatRules {
    fn default() -> Self {
        Self {
            question: "How would you rate the help you got? (1 = poor, 5 = great)".into(),
            replies: ["1", "2", "3", "4", "5"].map(String::from).to_vec(),
            window_secs: 600,
            thanks: "Thank you for your feedback!".into(),
        }
    }
}

impl CsatRules {
    /// The reply `said` picks, if it is one (matched whole, in any case).
    pub fn answer(&self, said: &str) -> Option<&str> {
        let said = said.trim();
        self.replies
            .iter()
            .find(|r| r.trim().eq_ignore_ascii_case(said))
            .map(String::as_str)
    }
}

impl Channel {
    /// A string field of `info`, e.g. `sendResponseApi`.
    pub fn info_str(&self, key: &str) -> Option<&str> {
        self.info.get(key).and_then(Value::as_str)
    }

    /// Constant-time comparison of a presented token with this channel's.
    pub fn token_matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.access_token.expose_secret();
        !expected.is_empty() && presented.as_bytes().ct_eq(expected.as_bytes()).into()
    }

    pub fn member_id(&self, external_id: &str) -> Uuid {
        member_id(&self.id, external_id)
    }
}

/// Handoff's member `_id`: a name-based UUID of (inlet channel, externalId), so every
/// gateway derives the same id, and so the same partition, without a database.
pub fn member_id(channel: &str, external_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_8d2e_4a0b_4f6e_9d57_2b1c_0e3a_5f71);
    Uuid::new_v5(&NAMESPACE, format!("{channel}\n{external_id}").as_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsFile {
    channels: Vec<Channel>,
}

/// All configured channels, by id, which of them an operator disabled, and which outlets
/// an operator switched unavailable.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    by_id: HashMap<String, Arc<Channel>>,
    disabled: std::collections::BTreeSet<String>,
    unavailable: std::collections::BTreeSet<String>,
}

impl Channels {
    pub fn load(path: &Path) -> Result<Self, ChannelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChannelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ChannelError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates a channels document; the error names the offending field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let as_written = value.clone();
        expand_env(&mut value, "")?;
        let file: ChannelsFile =
            serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
                p if p == "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            })?;
        let mut by_id = HashMap::new();
        for (i, mut channel) in file.channels.into_iter().enumerate() {
            validate_shape(i, &channel)?;
            let path = format!("channel `{}`.hours", channel.id);
            if let Some(hours) = &mut channel.hours {
                hours.compile(&path)?;
            }
            channel.info_as_written = as_written
                .get("channels")
                .and_then(|list| list.get(i))
                .and_then(|c| c.get("info"))
                .and_then(|info| serde_json::to_value(info).ok())
                .and_then(|info| match info {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .unwrap_or_default();
            let id = channel.id.clone();
            if by_id.insert(id.clone(), Arc::new(channel)).is_some() {
                return Err(format!("channels[{i}].id: `{id}` is used twice"));
            }
        }
        let channels = Self {
            by_id,
            ..Default::default()
        };
        channels.validate_links()?;
        Ok(channels)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Channel>> {
        self.by_id.get(id)
    }

    /// These channels refuse new messages (what they already accepted is still delivered).
    pub fn with_disabled(mut self, disabled: impl IntoIterator<Item = String>) -> Self {
        self.disabled = disabled.into_iter().collect();
        self
    }

    pub fn is_enabled(&self, id: &str) -> bool {
        !self.disabled.contains(id)
    }

    /// These outlets take no handoffs, as if outside their hours.
    pub fn with_unavailable(mut self, unavailable: impl IntoIterator<Item = String>) -> Self {
        self.unavailable = unavailable.into_iter().collect();
        self
    }

    pub fn is_available(&self, id: &str) -> bool {
        !self.unavailable.contains(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Channel>> {
        self.by_id.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn validate_links(&self) -> Result<(), String> {
        for channel in self.by_id.values() {
            let id = &channel.id;
            for (field, target, role) in [
                ("bot", &channel.bot, Role::Bot),
                ("outlet", &channel.outlet, Role::Outlet),
            ] {
                let Some(target) = target else { continue };
                let other = self.by_id.get(target).ok_or_else(|| {
                    format!("channel `{id}`.{field}: no channel has id `{target}`")
                })?;
                if other.role != role {
                    return Err(format!(
                        "channel `{id}`.{field}: channel `{target}` has role {:?}, expected {role:?}",
                        other.role
                    ));
                }
                if other.org != channel.org {
                    return Err(format!(
                        "channel `{id}`.{field}: channel `{target}` belongs to org `{}`, not `{}`",
                        other.org, channel.org
                    ));
                }
            }
        }
        Ok(())
    }
}

fn validate_shape(i: usize, c: &Channel) -> Result<(), String> {
    let valid_token = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    };
    if !valid_token(&c.id) {
        return Err(format!(
            "channels[{i}].id: `{}` must be 1-64 characters of A-Z, a-z, 0-9, `-`, `_`",
            c.id
        ));
    }
    if !valid_token(&c.org) {
        return Err(format!(
            "channel `{}`.org: `{}` must be 1-64 characters of A-Z, a-z, 0-9, `-`, `_`",
            c.id, c.org
        ));
    }
    // Zendesk is reached over its own socket, a subscriber only hears, web chat visitors
    // carry tokens the hub signed.
    let calls_handoff = !matches!(
        c.platform,
        Platform::Zendesk | Platform::Webhook | Platform::Webchat
    );
    if calls_handoff && c.access_token.expose_secret().len() < 8 {
        return Err(format!(
            "channel `{}`.accessToken: must be at least 8 characters",
            c.id
        ));
    }
    // What each platform needs in `info`, and which roles it can play, is checked by
    // its adapter (`handoff_platforms::ChannelSettings`), where those settings are read.
    if c.role == Role::Inlet && c.bot.is_none() {
        return Err(format!(
            "channel `{}`.bot: an inlet needs the id of the bot that answers its members",
            c.id
        ));
    }
    c.notices.validate(&format!("channel `{}`.notices", c.id))?;
    if let Some(csat) = &c.csat {
        let bad = |r: &String| r.trim().is_empty() || r.len() > 20;
        if csat.replies.is_empty() || csat.replies.len() > 11 || csat.replies.iter().any(bad) {
            return Err(format!(
                "channel `{}`.csat.replies: 1 to 11 replies of 1-20 characters",
                c.id
            ));
        }
    }
    if c.coalesce_ms > 0 && c.role != Role::Bot {
        return Err(format!("channel `{}`.coalesceMs: only bots coalesce", c.id));
    }
    if c.coalesce_ms > 60_000 {
        return Err(format!(
            "channel `{}`.coalesceMs: at most 60000 (a minute)",
            c.id
        ));
    }
    if c.role != Role::Inlet && (c.bot.is_some() || c.outlet.is_some()) {
        return Err(format!(
            "channel `{}`: only inlets have `bot` and `outlet`",
            c.id
        ));
    }
    Ok(())
}

fn no_token() -> SecretString {
    SecretString::from("")
}

/// Where the first `${NAME}` reference of a document is, if it has one.
pub fn env_reference(text: &str) -> Option<String> {
    fn find(value: &serde_yaml::Value, path: &str) -> Option<String> {
        match value {
            serde_yaml::Value::String(s) => s.contains("${").then(|| path.to_string()),
            serde_yaml::Value::Sequence(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| find(item, &format!("{path}[{i}]"))),
            serde_yaml::Value::Mapping(map) => map.iter().find_map(|(k, v)| {
                let key = k.as_str().unwrap_or("?");
                find(
                    v,
                    &if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    },
                )
            }),
            _ => None,
        }
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    find(&value, "")
}

/// Replaces `${NAME}` in every string with the environment variable NAME.
fn expand_env(value: &mut serde_yaml::Value, path: &str) -> Result<(), String> {
    match value {
        serde_yaml::Value::String(s) => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("{path}: unterminated `${{` in value"))?;
                let name = &after[..end];
                let val = std::env::var(name)
                    .map_err(|_| format!("{path}: environment variable `{name}` is not set"))?;
                out.push_str(&val);
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{path}[{i}]"))?;
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                expand_env(v, &child)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
channels:
  - id: web
    org: acme
    platform: custom
    role: inlet
    accessToken: "${HANDOFF_TEST_TOKEN}"
    info:
      sendResponseApi: http://127.0.0.1:9/send
      brand: acme-blue
    bot: echo
    outlet: desk
  - id: echo
    org: acme
    platform: webhook-bot
    role: bot
    accessToken: bot-token-123
    info: { url: "http://127.0.0.1:9/bot" }
  - id: desk
    org: acme
    platform: custom
    role: outlet
    accessToken: desk-token-123
    info:
      livechatApi: http://127.0.0.1:9/livechat
      relayResponseApi: http://127.0.0.1:9/relay
"#;

    #[test]
    fn a_valid_file_loads_and_keeps_extra_info_keys() {
        let text = VALID.replace("${HANDOFF_TEST_TOKEN}", "s3cret-token");
        let channels = Channels::parse(&text).unwrap();
        let web = channels.get("web").unwrap();
        assert_eq!(web.info_str("brand"), Some("acme-blue"));
        assert!(web.token_matches("s3cret-token"));
        assert!(!web.token_matches("s3cret-tokeN"));
        assert_eq!(web.live_chat.end_command, "done");
    }

    #[test]
    fn info_is_kept_as_written_beside_its_expanded_form() {
        // PATH is set in every environment a test runs in.
        let text = VALID
            .replace("${HANDOFF_TEST_TOKEN}", "s3cret-token")
            .replace("acme-blue", "${PATH}");
        let channels = Channels::parse(&text).unwrap();
        let web = channels.get("web").unwrap();
        assert_eq!(
            web.info_str("brand"),
            Some(std::env::var("PATH").unwrap().as_str())
        );
        assert_eq!(web.info_as_written["brand"], "${PATH}");
        assert_eq!(
            env_reference(&text).as_deref(),
            Some("channels[0].info.brand")
        );
        assert_eq!(
            env_reference(VALID).as_deref(),
            Some("channels[0].accessToken")
        );
        assert_eq!(env_reference("channels: []"), None);
    }

    #[test]
    fn only_a_channel_that_never_calls_handoff_goes_without_an_access_token() {
        let yaml = |platform: &str| {
            format!(
                "channels:\n  - {{id: in, org: o, platform: {platform}, role: inlet, bot: b}}\n  - {{id: b, org: o, platform: webhook-bot, role: bot, accessToken: bot-token-123}}\n"
            )
        };
        let zendesk = Channels::parse(&yaml("zendesk")).unwrap();
        assert!(!zendesk.get("in").unwrap().token_matches(""));
        let err = Channels::parse(&yaml("custom")).unwrap_err();
        assert!(err.contains("`in`.accessToken"), "{err}");
    }

    #[test]
    fn a_missing_env_reference_names_the_field() {
        let text = VALID.replace("HANDOFF_TEST_TOKEN", "HANDOFF_SURELY_UNSET_VARIABLE");
        let err = Channels::parse(&text).unwrap_err();
        assert!(err.contains("channels[0].accessToken"), "{err}");
        assert!(err.contains("HANDOFF_SURELY_UNSET_VARIABLE"), "{err}");
    }

    #[test]
    fn env_references_are_expanded_from_the_environment() {
        // PATH is set in every environment a test runs in.
        let text = VALID
            .replace("${HANDOFF_TEST_TOKEN}", "s3cret-token")
            .replace("acme-blue", "${PATH}");
        let channels = Channels::parse(&text).unwrap();
        assert_eq!(
            channels.get("web").unwrap().info_str("brand"),
            Some(std::env::var("PATH").unwrap().as_str())
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = VALID
            .replace("${HANDOFF_TEST_TOKEN}", "s3cret-token")
            .replacen("    org: acme\n", "", 1);
        let err = Channels::parse(&text).unwrap_err();
        assert!(err.contains("channels[0]") && err.contains("org"), "{err}");
    }

    #[test]
    fn a_link_to_an_unknown_bot_is_refused() {
        let text = VALID
            .replace("${HANDOFF_TEST_TOKEN}", "s3cret-token")
            .replace("bot: echo", "bot: nobody");
        let err = Channels::parse(&text).unwrap_err();
        assert!(err.contains("`web`.bot") && err.contains("nobody"), "{err}");
    }

    #[test]
    fn member_ids_are_stable_and_channel_scoped() {
        assert_eq!(member_id("web", "u1"), member_id("web", "u1"));
        assert_ne!(member_id("web", "u1"), member_id("web2", "u1"));
        assert_ne!(member_id("web", "u1"), member_id("web", "u2"));
    }
}

//! The one place a channel's platform and role become typed settings and a serving
//! service. `handoff_config::Platform` is the closed list of platforms; the `match` in
//! [`ChannelSettings::parse`] has no catch-all for a supported pair, so a new platform is a
//! compile error here until its folder is wired in.

use std::collections::HashMap;
use std::sync::Arc;

use handoff_bus::Service;
use handoff_config::{Channel, Channels, Platform, Role};

use crate::{custom, selarti, webhook_bot, zendesk};

/// A channel's platform-specific settings, parsed by the platform's own `settings` module.
#[derive(Debug, Clone)]
pub enum ChannelSettings {
    CustomInlet(custom::InletSettings),
    CustomOutlet(custom::OutletSettings),
    WebhookBot(webhook_bot::BotSettings),
    Selarti(selarti::SelartiSettings),
    Zendesk(zendesk::ZendeskSettings),
    Subscriber(SubscriberSettings),
    Webchat(crate::webchat::WebchatSettings),
}

/// A lifecycle subscription: where an org's conversation events are POSTed, and which.
#[derive(Debug, Clone)]
pub struct SubscriberSettings {
    /// `info.url`.
    pub url: String,
    /// `info.events`: the events wanted (none listed: all).
    pub events: Vec<String>,
}

/// The events a subscriber may ask for.
pub const LIFECYCLE_EVENTS: [&str; 8] = [
    "handoff_requested",
    "handoff_failed",
    "accepted",
    "first_agent_reply",
    "transferred",
    "ended",
    "returned_to_bot",
    "csat",
];

impl SubscriberSettings {
    fn from_channel(c: &Channel) -> Result<Self, String> {
        let url = match c.info_str("url") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => u.to_string(),
            _ => {
                return Err(format!(
                    "channel `{}`.info.url: required, an http(s) URL where events are posted",
                    c.id
                ));
            }
        };
        let events: Vec<String> = match c.info.get("events") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|e| match e.as_str() {
                    Some(e) if LIFECYCLE_EVENTS.contains(&e) => Ok(e.to_string()),
                    _ => Err(format!(
                        "channel `{}`.info.events: `{e}` is not one of {}",
                        c.id,
                        LIFECYCLE_EVENTS.join(", ")
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(format!(
                    "channel `{}`.info.events: a list of event names",
                    c.id
                ));
            }
        };
        Ok(Self { url, events })
    }

    /// Whether this subscriber wants `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

impl ChannelSettings {
    /// Reads a channel's settings; the error names the channel and the field.
    pub fn parse(c: &Channel) -> Result<Self, String> {
        Ok(match (c.platform, c.role) {
            (Platform::Custom, Role::Inlet) => {
                Self::CustomInlet(custom::InletSettings::from_channel(c)?)
            }
            (Platform::Custom, Role::Outlet) => {
                Self::CustomOutlet(custom::OutletSettings::from_channel(c)?)
            }
            (Platform::WebhookBot, Role::Bot) => {
                Self::WebhookBot(webhook_bot::BotSettings::from_channel(c)?)
            }
            (Platform::Selarti, Role::Bot) => {
                Self::Selarti(selarti::SelartiSettings::from_channel(c)?)
            }
            (Platform::Zendesk, Role::Inlet) => {
                Self::Zendesk(zendesk::ZendeskSettings::from_channel(c)?)
            }
            (Platform::Webchat, Role::Inlet) => {
                Self::Webchat(crate::webchat::WebchatSettings::from_channel(c)?)
            }
            (Platform::Webhook, Role::Subscriber) => {
                Self::Subscriber(SubscriberSettings::from_channel(c)?)
            }
            (platform, role) => {
                return Err(format!(
                    "channel `{}`.role: a {platform:?} channel cannot have role {role:?}",
                    c.id
                ));
            }
        })
    }

    /// The service that talks to this channel's platform, and so consumes its commands.
    pub fn service(&self) -> Service {
        match self {
            Self::CustomInlet(_) | Self::Webchat(_) => Service::InletGateway,
            Self::CustomOutlet(_)
            | Self::WebhookBot(_)
            | Self::Selarti(_)
            | Self::Subscriber(_) => Service::OutletGateway,
            Self::Zendesk(_) => Service::ZendeskAgent,
        }
    }

    /// Where a member of inlet `c` goes when handed to a human: the inlet's own platform
    /// when it has humans of its own (a Zendesk department), else the inlet's outlet.
    pub fn handoff_target<'c>(&self, c: &'c Channel) -> Option<&'c str> {
        match self {
            Self::Zendesk(z) if z.department.is_some() => Some(&c.id),
            _ => c.outlet.as_deref(),
        }
    }
}

/// A text setting of `info`, trimmed: absent or `null` is `None`; anything but a
/// non-empty string is an error naming the field.
pub(crate) fn info_text(c: &Channel, key: &str) -> Result<Option<String>, String> {
    match c.info.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
            Ok(Some(s.trim().to_string()))
        }
        Some(_) => Err(format!(
            "channel `{}`.info.{key}: must be a non-empty string",
            c.id
        )),
    }
}

/// Every configured channel's typed settings, parsed once at start: a bad channel stops the
/// service before it serves anything.
#[derive(Debug, Clone, Default)]
pub struct Platforms {
    by_id: HashMap<String, Arc<ChannelSettings>>,
}

impl Platforms {
    pub fn from_channels(channels: &Channels) -> Result<Self, String> {
        let mut by_id = HashMap::new();
        for c in channels.iter() {
            by_id.insert(c.id.clone(), Arc::new(ChannelSettings::parse(c)?));
        }
        Ok(Self { by_id })
    }

    pub fn get(&self, channel: &str) -> Option<&Arc<ChannelSettings>> {
        self.by_id.get(channel)
    }

    /// Where commands for `channel` go; `None` for a channel not configured.
    pub fn service_of(&self, channel: &str) -> Option<Service> {
        self.get(channel).map(|s| s.service())
    }

    /// See [`ChannelSettings::handoff_target`].
    pub fn handoff_target<'c>(&self, inlet: &'c Channel) -> Option<&'c str> {
        match self.get(&inlet.id) {
            Some(s) => s.handoff_target(inlet),
            None => inlet.outlet.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Platforms, String> {
        Platforms::from_channels(&Channels::parse(yaml)?)
    }

    const CHANNELS: &str = "channels:
  - id: web
    org: o
    platform: custom
    role: inlet
    accessToken: secret-123456
    info: { sendResponseApi: 'http://127.0.0.1:9/send' }
    bot: ai
    outlet: desk
  - id: ai
    org: o
    platform: selarti
    role: bot
    accessToken: secret-123456
    apiKey: key
    info: { taskId: t1 }
  - id: desk
    org: o
    platform: custom
    role: outlet
    accessToken: secret-123456
    info: { livechatApi: 'http://127.0.0.1:9/l', relayResponseApi: 'http://127.0.0.1:9/r' }
";

    #[test]
    fn each_channel_is_served_by_the_service_of_its_platform() {
        let platforms = parse(CHANNELS).unwrap();
        assert_eq!(platforms.service_of("web"), Some(Service::InletGateway));
        assert_eq!(platforms.service_of("desk"), Some(Service::OutletGateway));
        assert_eq!(platforms.service_of("ai"), Some(Service::OutletGateway));
        assert_eq!(platforms.service_of("nobody"), None);
    }

    #[test]
    fn a_custom_inlet_without_its_send_api_is_refused_naming_the_field() {
        let err = parse(&CHANNELS.replace("sendResponseApi", "sendApi")).unwrap_err();
        assert!(err.contains("`web`.info.sendResponseApi"), "{err}");
    }

    #[test]
    fn a_platform_in_a_role_it_cannot_play_is_refused() {
        let err = parse(&CHANNELS.replace("platform: selarti", "platform: custom")).unwrap_err();
        assert!(err.contains("`ai`.role"), "{err}");
    }

    #[test]
    fn a_selarti_bot_without_its_key_is_refused_naming_the_field() {
        let err = parse(&CHANNELS.replace("    apiKey: key\n", "")).unwrap_err();
        assert!(err.contains("`ai`.apiKey"), "{err}");
    }

    #[test]
    fn the_shipped_demo_channel_files_are_valid() {
        for (name, text) in [
            (
                "channels.local.yaml",
                include_str!("../../../deploy/channels.local.yaml"),
            ),
            (
                "channels.local-selarti.yaml",
                include_str!("../../../deploy/channels.local-selarti.yaml"),
            ),
        ] {
            let platforms = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                platforms.service_of("chat"),
                Some(Service::InletGateway),
                "{name}"
            );
        }
    }

    const SUBSCRIBER: &str = "
  - id: crm
    org: o
    platform: webhook
    role: subscriber
    info: { url: 'https://crm.example.com/handoff', events: [accepted, ended] }
";

    #[test]
    fn a_subscriber_needs_no_token_and_hears_only_the_events_it_lists() {
        let platforms = parse(&format!("{CHANNELS}{SUBSCRIBER}")).unwrap();
        assert_eq!(platforms.service_of("crm"), Some(Service::OutletGateway));
        let Some(ChannelSettings::Subscriber(s)) = platforms.get("crm").map(|s| &**s) else {
            panic!("crm is not a subscriber");
        };
        assert!(s.wants("accepted") && s.wants("ended"));
        assert!(!s.wants("csat"));
    }

    #[test]
    fn a_subscriber_asking_for_an_unknown_event_or_without_a_url_is_refused() {
        let unknown = SUBSCRIBER.replace("ended]", "closed]");
        let err = parse(&format!("{CHANNELS}{unknown}")).unwrap_err();
        assert!(err.contains("`crm`.info.events: `\"closed\"`"), "{err}");
        let no_url = SUBSCRIBER.replace("url: 'https://crm.example.com/handoff', ", "");
        let err = parse(&format!("{CHANNELS}{no_url}")).unwrap_err();
        assert!(err.contains("`crm`.info.url"), "{err}");
    }
}

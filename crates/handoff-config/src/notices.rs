//! What the customer is told at each moment of a handoff: texts per inlet, with defaults,
//! a translation per locale, and small templates (`{agentName}`, `{profile.firstName}`,
//! `{nextOpenAt|soon}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A moment the customer hears of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A handoff was asked for and the desk is being called.
    HandoffRequested,
    /// The desk took the request but did not say who will answer.
    Queued,
    /// An agent is on it: on the desk's acceptance when it names the agent, otherwise on
    /// the agent's first message.
    AgentJoined,
    /// The live chat moved to another team.
    Transferred,
    /// The customer cancelled a handoff still waiting for the desk.
    HandoffCancelled,
    /// The desk accepted, and no agent has written within `firstReplySecs`.
    StillWaiting,
    /// The agent has not written for `agentIdleSecs` while the customer waits.
    AgentIdle,
    /// The live chat is over; the bot answers again.
    LiveChatEnded,
    /// No human could take the customer (the desk refused, failed, or nobody accepted).
    Unavailable,
    /// The desk is closed.
    OutsideHours,
    /// A delivery keeps failing and is being retried.
    Trouble,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 11] = [
        NoticeKind::StillWaiting,
        NoticeKind::AgentIdle,
        NoticeKind::HandoffRequested,
        NoticeKind::Queued,
        NoticeKind::AgentJoined,
        NoticeKind::Transferred,
        NoticeKind::HandoffCancelled,
        NoticeKind::LiveChatEnded,
        NoticeKind::Unavailable,
        NoticeKind::OutsideHours,
        NoticeKind::Trouble,
    ];

    /// The key in the channels file, also what the transcript records.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::HandoffRequested => "handoffRequested",
            NoticeKind::Queued => "queued",
            NoticeKind::AgentJoined => "agentJoined",
            NoticeKind::Transferred => "transferred",
            NoticeKind::HandoffCancelled => "handoffCancelled",
            NoticeKind::StillWaiting => "stillWaiting",
            NoticeKind::AgentIdle => "agentIdle",
            NoticeKind::LiveChatEnded => "liveChatEnded",
            NoticeKind::Unavailable => "unavailable",
            NoticeKind::OutsideHours => "outsideHours",
            NoticeKind::Trouble => "trouble",
        }
    }

    /// The text used when the channel says nothing.
    pub fn default_text(self) -> &'static str {
        match self {
            NoticeKind::HandoffRequested => "I'm connecting you with a person. One moment, please.",
            NoticeKind::Queued => "You're in the queue. An agent will be with you shortly.",
            NoticeKind::AgentJoined => "{agentName|An agent} has joined the chat.",
            NoticeKind::Transferred => {
                "You're being transferred to another team. One moment, please."
            }
            NoticeKind::HandoffCancelled => {
                "OK, I've cancelled your request. You're talking to our assistant again."
            }
            NoticeKind::StillWaiting => {
                "Thanks for waiting. An agent will be with you as soon as possible."
            }
            NoticeKind::AgentIdle => {
                "Sorry for the wait. If nobody answers soon, our assistant will take over again."
            }
            NoticeKind::LiveChatEnded => {
                "The agent has left the chat. You are talking to our assistant again."
            }
            NoticeKind::Unavailable => {
                "No one from our team is available right now. Our assistant will keep helping you."
            }
            NoticeKind::OutsideHours => {
                "Our team is offline right now and back {nextOpenAt|soon}. Our assistant will keep helping you."
            }
            NoticeKind::Trouble => {
                "We're having trouble passing on your message. It will be delivered as soon as we can."
            }
        }
    }
}

/// One configured notice: a template, or silence (`null`, `""` or `none` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Silent,
    Text(String),
}

impl<'de> Deserialize<'de> for Notice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        Ok(match text {
            None => Notice::Silent,
            Some(t) if t.trim().is_empty() || t.trim() == "none" => Notice::Silent,
            Some(t) => Notice::Text(t),
        })
    }
}

/// An inlet's notices; a field left out keeps its default. `translations` holds the same
/// fields per locale (`de`, `pt-BR`), picked by the member profile's `locale`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Notices {
    #[serde(deserialize_with = "present")]
    pub handoff_requested: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub queued: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub agent_joined: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub transferred: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub handoff_cancelled: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub still_waiting: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub agent_idle: Option<Notice>,
    /// Left out: the outlet's `liveChat.endText`, where this text lived first.
    #[serde(deserialize_with = "present")]
    pub live_chat_ended: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub unavailable: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub outside_hours: Option<Notice>,
    #[serde(deserialize_with = "present")]
    pub trouble: Option<Notice>,
    pub translations: BTreeMap<String, Notices>,
}

/// A field written in the file is `Some`, even when it is `null` (silence): only one left
/// out keeps its default.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Notice>, D::Error> {
    Notice::deserialize(d).map(Some)
}

impl Notices {
    fn field(&self, kind: NoticeKind) -> Option<&Notice> {
        match kind {
            NoticeKind::HandoffRequested => self.handoff_requested.as_ref(),
            NoticeKind::Queued => self.queued.as_ref(),
            NoticeKind::AgentJoined => self.agent_joined.as_ref(),
            NoticeKind::Transferred => self.transferred.as_ref(),
            NoticeKind::HandoffCancelled => self.handoff_cancelled.as_ref(),
            NoticeKind::StillWaiting => self.still_waiting.as_ref(),
            NoticeKind::AgentIdle => self.agent_idle.as_ref(),
            NoticeKind::LiveChatEnded => self.live_chat_ended.as_ref(),
            NoticeKind::Unavailable => self.unavailable.as_ref(),
            NoticeKind::OutsideHours => self.outside_hours.as_ref(),
            NoticeKind::Trouble => self.trouble.as_ref(),
        }
    }

    /// The template for `kind` in `locale` (its translation, then its language's, then the
    /// channel's own text, then `fallback`); `None` when that notice is silenced.
    pub fn template<'a>(
        &'a self,
        kind: NoticeKind,
        locale: Option<&str>,
        fallback: &'a str,
    ) -> Option<&'a str> {
        let translated = locale.and_then(|locale| {
            let language = locale.split(['-', '_']).next().unwrap_or(locale);
            [locale, language].into_iter().find_map(|l| {
                self.translations
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(l))
                    .and_then(|(_, t)| t.field(kind))
            })
        });
        match translated.or_else(|| self.field(kind)) {
            Some(Notice::Silent) => None,
            Some(Notice::Text(t)) => Some(t),
            None if fallback.is_empty() => None,
            None => Some(fallback),
        }
    }

    /// Every template parses and names only what a notice can know.
    pub(crate) fn validate(&self, path: &str) -> Result<(), String> {
        for kind in NoticeKind::ALL {
            if let Some(Notice::Text(t)) = self.field(kind) {
                parse(t).map_err(|e| format!("{path}.{}: {e}", kind.as_str()))?;
            }
        }
        for (locale, t) in &self.translations {
            let here = format!("{path}.translations.{locale}");
            if !t.translations.is_empty() {
                return Err(format!("{here}.translations: translations do not nest"));
            }
            t.validate(&here)?;
        }
        Ok(())
    }
}

/// A piece of a template.
enum Piece<'a> {
    Text(&'a str),
    Var {
        name: &'a str,
        fallback: Option<&'a str>,
    },
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with("{{") || rest[open..].starts_with("}}") {
            pieces.push(Piece::Text(&rest[..=open]));
            rest = &rest[open + 2..];
            continue;
        }
        if rest[open..].starts_with('}') {
            return Err("a `}` without its `{` (write `}}` for the character)".into());
        }
        pieces.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or("a `{` without its `}` (write `{{` for the character)")?;
        let (name, fallback) = match after[..close].split_once('|') {
            Some((n, f)) => (n.trim(), Some(f)),
            None => (after[..close].trim(), None),
        };
        let known = matches!(name, "agentName" | "nextOpenAt")
            || name
                .strip_prefix("profile.")
                .is_some_and(|f| !f.is_empty() && !f.contains(['{', ' ']));
        if !known {
            return Err(format!(
                "`{{{name}}}` is not something a notice knows (agentName, nextOpenAt, profile.<field>)"
            ));
        }
        pieces.push(Piece::Var { name, fallback });
        rest = &after[close + 1..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Fills a template: `{name}` with `value(name)`, `{name|words}` with the words when there
/// is no value. A template that does not parse is sent as written (files are validated at
/// load, so only a hand-built one can be wrong).
pub fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let Ok(pieces) = parse(template) else {
        return template.to_string();
    };
    let mut out = String::with_capacity(template.len() + 16);
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var { name, fallback } => match value(name).filter(|v| !v.trim().is_empty()) {
                Some(v) => out.push_str(&v),
                None => out.push_str(fallback.unwrap_or_default()),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notices(yaml: &str) -> Notices {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_notice_left_out_has_its_default_and_a_null_one_is_silent() {
        let n = notices("queued: ~\ntrouble: none\nunavailable: ''\nhandoffRequested: Hold on");
        assert_eq!(
            n.template(NoticeKind::HandoffRequested, None, "x"),
            Some("Hold on")
        );
        assert_eq!(n.template(NoticeKind::Queued, None, "x"), None);
        assert_eq!(n.template(NoticeKind::Trouble, None, "x"), None);
        assert_eq!(n.template(NoticeKind::Unavailable, None, "x"), None);
        assert_eq!(
            n.template(NoticeKind::AgentJoined, None, "default"),
            Some("default")
        );
    }

    #[test]
    fn the_profile_locale_picks_a_translation_then_its_language_then_the_channel_text() {
        let n = notices(
            "queued: In the queue\ntranslations:\n  de: { queued: In der Warteschlange }\n  pt-BR: { queued: Na fila, agentJoined: ~ }",
        );
        let q = |l| n.template(NoticeKind::Queued, l, "d");
        assert_eq!(q(Some("de-AT")), Some("In der Warteschlange"));
        assert_eq!(q(Some("DE")), Some("In der Warteschlange"));
        assert_eq!(q(Some("pt-br")), Some("Na fila"));
        assert_eq!(q(Some("fr")), Some("In the queue"));
        assert_eq!(q(None), Some("In the queue"));
        assert_eq!(
            n.template(NoticeKind::AgentJoined, Some("pt-BR"), "d"),
            None
        );
    }

    #[test]
    fn a_template_fills_known_values_and_falls_back_to_its_words() {
        let value = |name: &str| match name {
            "agentName" => Some("Alice".to_string()),
            "profile.firstName" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            render("{agentName|An agent} joined, {{really}}", value),
            "Alice joined, {really}"
        );
        assert_eq!(
            render("Hi {profile.firstName|there}, back {nextOpenAt}.", value),
            "Hi there, back ."
        );
    }

    #[test]
    fn a_template_naming_something_unknown_or_unbalanced_is_refused_with_its_field() {
        let err = notices("queued: 'Hi {name}'")
            .validate("channel `web`.notices")
            .unwrap_err();
        assert!(
            err.contains("channel `web`.notices.queued") && err.contains("{name}"),
            "{err}"
        );
        let err = notices("translations: { de: { trouble: 'oops {agentName' } }")
            .validate("n")
            .unwrap_err();
        assert!(err.contains("n.translations.de.trouble"), "{err}");
        for kind in NoticeKind::ALL {
            assert!(parse(kind.default_text()).is_ok(), "{kind:?}");
        }
    }
}

//! A web chat channel's settings, from `info` and the channel's `secret`.

use handoff_config::Channel;
use secrecy::ExposeSecret as _;

/// `platform: webchat`, `role: inlet`.
#[derive(Debug, Clone)]
pub struct WebchatSettings {
    /// `info.allowedOrigins`: pages that may embed the chat (`https://shop.example.com`);
    /// `"*"` allows any. The hub's own pages are always allowed.
    pub allowed_origins: Vec<String>,
    /// `info.maxMessageChars` (default 2000): a longer message is refused, not cut.
    pub max_message_chars: usize,
    /// `info.messagesPerMinute` (default 30): per visitor, bursts of up to a third of it.
    pub messages_per_minute: u32,
    /// `info.tokenTtlDays` (default 30): how long a browser stays the same visitor.
    pub token_ttl_secs: u64,
    /// `info.title`: the chat's header (default "Chat with us").
    pub title: String,
    /// The key visitor tokens are signed with, from the channel's `secret`.
    pub token_key: Vec<u8>,
}

impl WebchatSettings {
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        let key = c
            .secret
            .as_ref()
            .map(|s| s.expose_secret().as_bytes().to_vec())
            .unwrap_or_default();
        if key.len() < 16 {
            return Err(format!(
                "channel `{}`.secret: required for a web chat, at least 16 characters (visitor tokens are signed with it)",
                c.id
            ));
        }
        let allowed_origins = match c.info.get("allowedOrigins") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|o| match o.as_str() {
                    Some(o) if o == "*" || valid_origin(o) => Ok(o.trim_end_matches('/').to_string()),
                    _ => Err(format!(
                        "channel `{}`.info.allowedOrigins: `{o}` is not an origin like https://shop.example.com (or \"*\")",
                        c.id
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(format!(
                    "channel `{}`.info.allowedOrigins: a list of origins",
                    c.id
                ));
            }
        };
        let number = |key: &str, default: u64, max: u64| -> Result<u64, String> {
            match c.info.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                    format!("channel `{}`.info.{key}: a number from 1 to {max}", c.id)
                }),
            }
        };
        Ok(Self {
            allowed_origins,
            max_message_chars: number("maxMessageChars", 2000, 20_000)? as usize,
            messages_per_minute: number("messagesPerMinute", 30, 6000)? as u32,
            token_ttl_secs: number("tokenTtlDays", 30, 3650)? * 86_400,
            title: c
                .info_str("title")
                .unwrap_or("Chat with us")
                .chars()
                .take(80)
                .collect(),
            token_key: key,
        })
    }

    /// Whether a page at `origin` may use this chat. `own` is the hub's own origin as the
    /// request reached it (its standalone page).
    pub fn allows_origin(&self, origin: &str, own: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/');
        own.is_some_and(|own| own == origin)
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

fn valid_origin(o: &str) -> bool {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    rest.is_some_and(|host| {
        let host = host.trim_end_matches('/');
        !host.is_empty() && !host.contains('/') && !host.contains('?') && !host.contains('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_config::Channels;

    fn settings(info: &str) -> Result<WebchatSettings, String> {
        let doc = format!(
            "channels:
  - id: chat
    org: o
    platform: webchat
    role: inlet
    secret: a-secret-of-16-chars-or-more
    info: {info}
    bot: b
  - id: b
    org: o
    platform: webhook-bot
    role: bot
    accessToken: bot-token-1
    info: {{ url: 'http://127.0.0.1:9/bot' }}
"
        );
        let channels = Channels::parse(&doc)?;
        WebchatSettings::from_channel(channels.get("chat").unwrap())
    }

    #[test]
    fn only_the_listed_origins_may_use_the_chat_besides_the_hubs_own() {
        let s = settings("{ allowedOrigins: ['https://shop.example.com/'] }").unwrap();
        assert!(s.allows_origin("https://shop.example.com", None));
        assert!(s.allows_origin("https://SHOP.example.com/", None));
        assert!(!s.allows_origin("https://shop.example.com.evil.net", None));
        assert!(
            !s.allows_origin("http://shop.example.com", None),
            "another scheme"
        );
        assert!(!s.allows_origin("null", None));
        assert!(s.allows_origin("https://hub.example.com", Some("https://hub.example.com")));
        let any = settings("{ allowedOrigins: ['*'] }").unwrap();
        assert!(any.allows_origin("https://anywhere.example", None));
        let none = settings("{}").unwrap();
        assert!(!none.allows_origin("https://shop.example.com", None));
    }

    #[test]
    fn a_bad_origin_a_bad_limit_or_a_short_secret_is_refused_naming_the_field() {
        let err = settings("{ allowedOrigins: ['shop.example.com'] }").unwrap_err();
        assert!(err.contains("`chat`.info.allowedOrigins"), "{err}");
        let err = settings("{ allowedOrigins: ['https://a.example/path'] }").unwrap_err();
        assert!(err.contains("allowedOrigins"), "{err}");
        let err = settings("{ messagesPerMinute: 0 }").unwrap_err();
        assert!(err.contains("`chat`.info.messagesPerMinute"), "{err}");
        let doc_err = settings("{}")
            .map(|_| ())
            .and_then(|()| {
                let doc = "channels:\n  - id: chat\n    org: o\n    platform: webchat\n    role: inlet\n    secret: short\n    bot: b\n  - id: b\n    org: o\n    platform: webhook-bot\n    role: bot\n    accessToken: bot-token-1\n    info: { url: 'http://127.0.0.1:9/bot' }\n";
                let channels = Channels::parse(doc)?;
                WebchatSettings::from_channel(channels.get("chat").unwrap()).map(|_| ())
            })
            .unwrap_err();
        assert!(doc_err.contains("`chat`.secret"), "{doc_err}");
    }
}

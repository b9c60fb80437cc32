//! A custom-platform channel's settings: the platform's API URLs, read from `info` (where
//! the Stella protocol keeps them, and which is echoed to the platform as `channel.info`).

use handoff_config::Channel;

/// A custom inlet (a web chat, a messenger connector): where customers' answers go.
#[derive(Debug, Clone)]
pub struct InletSettings {
    /// `info.sendResponseApi`.
    pub send_response_api: String,
}

/// A custom live-chat system.
#[derive(Debug, Clone)]
pub struct OutletSettings {
    /// `info.livechatApi`: hands a member to humans.
    pub livechat_api: String,
    /// `info.relayResponseApi`: a customer's message during a live chat.
    pub relay_response_api: String,
    /// `info.sendResponseApi`, optional: a bot's answer to an agent command.
    pub send_response_api: Option<String>,
}

impl InletSettings {
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        Ok(Self {
            send_response_api: url(c, "sendResponseApi")?
                .ok_or_else(|| required(c, "sendResponseApi", "inlet"))?,
        })
    }
}

impl OutletSettings {
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        Ok(Self {
            livechat_api: url(c, "livechatApi")?
                .ok_or_else(|| required(c, "livechatApi", "outlet"))?,
            relay_response_api: url(c, "relayResponseApi")?
                .ok_or_else(|| required(c, "relayResponseApi", "outlet"))?,
            send_response_api: url(c, "sendResponseApi")?,
        })
    }
}

fn required(c: &Channel, key: &str, role: &str) -> String {
    format!(
        "channel `{}`.info.{key}: required for a custom {role}",
        c.id
    )
}

fn url(c: &Channel, key: &str) -> Result<Option<String>, String> {
    match c.info.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(u))
            if u.starts_with("http://") || u.starts_with("https://") =>
        {
            Ok(Some(u.clone()))
        }
        Some(other) => Err(format!(
            "channel `{}`.info.{key}: `{}` is not an http(s) URL",
            c.id,
            other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_config::Channels;

    fn channel(role: &str, info: &str) -> Channel {
        let yaml = format!(
            "channels:\n  - id: c\n    org: o\n    platform: custom\n    role: {role}\n    accessToken: secret-123456\n    info: {info}\n"
        );
        let channels = Channels::parse(&yaml).map_err(|e| e.to_string());
        // Inlets need a bot to pass the generic checks; outlets stand alone.
        match channels {
            Ok(c) => (**c.get("c").unwrap()).clone(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn an_outlet_without_a_relay_api_is_refused_naming_the_field() {
        let c = channel("outlet", "{livechatApi: 'http://x/l'}");
        let err = OutletSettings::from_channel(&c).unwrap_err();
        assert!(err.contains("`c`.info.relayResponseApi"), "{err}");
    }

    #[test]
    fn a_url_that_is_not_http_is_named() {
        let c = channel(
            "outlet",
            "{livechatApi: 'ftp://x/l', relayResponseApi: 'http://x/r'}",
        );
        let err = OutletSettings::from_channel(&c).unwrap_err();
        assert!(
            err.contains("info.livechatApi") && err.contains("ftp://x/l"),
            "{err}"
        );
    }

    #[test]
    fn an_outlet_send_api_is_optional() {
        let c = channel(
            "outlet",
            "{livechatApi: 'http://x/l', relayResponseApi: 'http://x/r'}",
        );
        let s = OutletSettings::from_channel(&c).unwrap();
        assert_eq!(s.send_response_api, None);
        assert_eq!(s.relay_response_api, "http://x/r");
    }
}

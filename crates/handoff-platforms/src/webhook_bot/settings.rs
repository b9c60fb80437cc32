//! A webhook bot channel's settings.

use handoff_config::Channel;

#[derive(Debug, Clone)]
pub struct BotSettings {
    /// `info.url`: where each customer message is POSTed.
    pub url: String,
}

impl BotSettings {
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        match c.info_str("url") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Ok(Self { url: u.to_string() })
            }
            Some(u) => Err(format!(
                "channel `{}`.info.url: `{u}` is not an http(s) URL",
                c.id
            )),
            None => Err(format!(
                "channel `{}`.info.url: required for a webhook bot (where Handoff posts each message)",
                c.id
            )),
        }
    }
}

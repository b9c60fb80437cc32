//! A Selarti bot channel's settings.

use handoff_config::Channel;
use secrecy::SecretString;

/// Selarti's public API, per its docs.
pub const DEFAULT_API_BASE: &str = "https://selarti.com/api/1.1";

/// The send-message method. Selarti's public docs do not show its path (the Postman
/// request is not in the published collection), so it is configurable; this default
/// follows the Bubble workflow naming of `/wf/auth`.
pub const DEFAULT_SEND_PATH: &str = "/wf/send_message";

#[derive(Debug, Clone)]
pub struct SelartiSettings {
    pub channel_id: String,
    /// `info.apiBase`, without a trailing slash.
    pub api_base: String,
    /// `info.taskId`: the Web task that binds Selarti's channel, AI and integration.
    pub task_id: String,
    /// `info.sendPath`.
    pub send_path: String,
    pub api_key: SecretString,
}

impl SelartiSettings {
    /// Reads the channel's settings; the error names the field.
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        let field = |key: &str| crate::platform::info_text(c, key);
        let api_base = field("apiBase")?.unwrap_or_else(|| DEFAULT_API_BASE.into());
        if !(api_base.starts_with("http://") || api_base.starts_with("https://")) {
            return Err(format!(
                "channel `{}`.info.apiBase: `{api_base}` is not an http(s) URL",
                c.id
            ));
        }
        let task_id = field("taskId")?.ok_or_else(|| {
            format!(
                "channel `{}`.info.taskId: required (the id of the Selarti Web task)",
                c.id
            )
        })?;
        let send_path = field("sendPath")?.unwrap_or_else(|| DEFAULT_SEND_PATH.into());
        if !send_path.starts_with('/') {
            return Err(format!(
                "channel `{}`.info.sendPath: `{send_path}` must start with `/`",
                c.id
            ));
        }
        let api_key = c
            .api_key
            .clone()
            .ok_or_else(|| format!("channel `{}`.apiKey: required for a Selarti bot", c.id))?;
        Ok(Self {
            channel_id: c.id.clone(),
            api_base: api_base.trim_end_matches('/').to_string(),
            task_id,
            send_path,
            api_key,
        })
    }

    pub fn auth_url(&self) -> String {
        format!("{}/wf/auth", self.api_base)
    }

    pub fn send_url(&self) -> String {
        format!("{}{}", self.api_base, self.send_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_config::Channels;

    fn channel(extra: &str) -> Result<SelartiSettings, String> {
        let yaml = format!(
            "channels:\n  - id: ai\n    org: o\n    platform: selarti\n    role: bot\n    accessToken: secret-123456\n    apiKey: key-1\n{extra}"
        );
        let channels = Channels::parse(&yaml)?;
        SelartiSettings::from_channel(channels.get("ai").unwrap())
    }

    #[test]
    fn defaults_fill_the_base_and_the_send_path() {
        let s = channel("    info:\n      taskId: t1\n").unwrap();
        assert_eq!(s.send_url(), "https://selarti.com/api/1.1/wf/send_message");
        assert_eq!(s.auth_url(), "https://selarti.com/api/1.1/wf/auth");
    }

    #[test]
    fn a_missing_task_id_is_named() {
        let err = channel("").unwrap_err();
        assert!(err.contains("info.taskId"), "{err}");
    }

    #[test]
    fn a_bad_base_is_named() {
        let err = channel("    info:\n      taskId: t1\n      apiBase: ftp://x\n").unwrap_err();
        assert!(err.contains("info.apiBase"), "{err}");
    }
}

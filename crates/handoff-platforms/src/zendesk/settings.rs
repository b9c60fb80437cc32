//! A Zendesk Chat inlet's settings.

use handoff_config::Channel;
use secrecy::SecretString;

/// Where `startAgentSession` is called (spec §2.1).
pub const DEFAULT_ENDPOINT: &str = "https://chat-api.zopim.com/graphql/request";

#[derive(Debug, Clone)]
pub struct ZendeskSettings {
    pub channel_id: String,
    /// `info.endpoint`: the HTTP GraphQL endpoint.
    pub endpoint: String,
    /// `apiKey`: the OAuth access token (scope `read write chat`) of the agent account.
    pub access_token: SecretString,
    /// `info.department`: the department, by name or id, a handoff that stays inside
    /// Zendesk transfers the chat to. Without it, handoffs go to the inlet's `outlet`.
    pub department: Option<String>,
}

impl ZendeskSettings {
    /// Reads the channel's settings; the error names the field.
    pub fn from_channel(c: &Channel) -> Result<Self, String> {
        let endpoint =
            crate::platform::info_text(c, "endpoint")?.unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(format!(
                "channel `{}`.info.endpoint: `{endpoint}` is not an http(s) URL",
                c.id
            ));
        }
        let access_token = c.api_key.clone().ok_or_else(|| {
            format!(
                "channel `{}`.apiKey: required for a Zendesk inlet (the agent's OAuth access token, scope `read write chat`)",
                c.id
            )
        })?;
        // A department id is a number in Zendesk's API; a name is text.
        let department = match c.info.get("department") {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => crate::platform::info_text(c, "department")?,
        };
        if let (Some(department), Some(outlet)) = (&department, &c.outlet) {
            return Err(format!(
                "channel `{}`: hand off either to Zendesk department `{department}` (info.department) or to outlet `{outlet}` (outlet), not both",
                c.id
            ));
        }
        Ok(Self {
            channel_id: c.id.clone(),
            endpoint,
            access_token,
            department,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_config::Channels;

    fn channel(extra: &str) -> Channel {
        let yaml = format!(
            "channels:\n  - id: zd\n    org: o\n    platform: zendesk\n    role: inlet\n    accessToken: secret-123456\n    bot: b\n{extra}  - id: b\n    org: o\n    platform: webhook-bot\n    role: bot\n    accessToken: secret-123456\n"
        );
        (**Channels::parse(&yaml).unwrap().get("zd").unwrap()).clone()
    }

    #[test]
    fn the_endpoint_defaults_to_zendesks_and_the_department_is_optional() {
        let s = ZendeskSettings::from_channel(&channel("    apiKey: oauth-token\n")).unwrap();
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.department, None);
    }

    #[test]
    fn a_missing_token_is_named() {
        let err = ZendeskSettings::from_channel(&channel("")).unwrap_err();
        assert!(err.contains("`zd`.apiKey"), "{err}");
    }

    #[test]
    fn a_department_and_an_outlet_together_are_refused() {
        let mut c = channel("    apiKey: t\n    info: { department: Support }\n");
        c.outlet = Some("desk".into());
        let err = ZendeskSettings::from_channel(&c).unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn a_department_id_may_be_a_number() {
        let c = channel("    apiKey: t\n    info: { department: 360001 }\n");
        let s = ZendeskSettings::from_channel(&c).unwrap();
        assert_eq!(s.department.as_deref(), Some("360001"));
    }
}

//! Selarti's API: a Bearer token from `POST {apiBase}/wf/auth`, cached per channel and
//! refreshed once when a call answers 401. Neither the key nor the token is ever logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use super::settings::SelartiSettings;
use crate::outbound::{DeliveryError, OutboundClient};

#[derive(Clone, Default)]
pub struct SelartiClient {
    tokens: Arc<Mutex<HashMap<String, SecretString>>>,
}

impl SelartiClient {
    /// Sends `body` to the send-message method under delivery id `id`.
    pub async fn send(
        &self,
        http: &OutboundClient,
        settings: &SelartiSettings,
        id: &str,
        body: &Value,
    ) -> Result<(), DeliveryError> {
        let mut refreshed = false;
        loop {
            let token = match self.cached(&settings.channel_id) {
                Some(token) => token,
                None => {
                    refreshed = true;
                    self.authenticate(http, settings, id).await?
                }
            };
            match http
                .post_json_bearer(&settings.send_url(), id, body, token.expose_secret())
                .await
            {
                Err(DeliveryError::Rejected { status: 401, .. }) if !refreshed => {
                    tracing::info!(channel = %settings.channel_id, "Selarti token refused; authenticating again");
                    self.forget(&settings.channel_id);
                }
                other => return other.map(|_| ()),
            }
        }
    }

    fn cached(&self, channel: &str) -> Option<SecretString> {
        self.tokens
            .lock()
            .expect("token lock")
            .get(channel)
            .cloned()
    }

    fn forget(&self, channel: &str) {
        self.tokens.lock().expect("token lock").remove(channel);
    }

    async fn authenticate(
        &self,
        http: &OutboundClient,
        settings: &SelartiSettings,
        id: &str,
    ) -> Result<SecretString, DeliveryError> {
        let body = json!({"key": settings.api_key.expose_secret()});
        let answer = http
            .post_json(&settings.auth_url(), &format!("{id}-auth"), &body, None)
            .await?;
        let token = token_from(&answer.body).ok_or_else(|| DeliveryError::Rejected {
            status: answer.status,
            body: "Selarti's auth answer has no token (`response.token` or `token`)".into(),
        })?;
        self.tokens
            .lock()
            .expect("token lock")
            .insert(settings.channel_id.clone(), token.clone());
        Ok(token)
    }
}

/// The token of an auth answer: Bubble's `{"response": {"token"}}` or a flat `{"token"}`.
fn token_from(body: &[u8]) -> Option<SecretString> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/response/token")
        .or_else(|| v.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_token_shapes_are_read() {
        use secrecy::ExposeSecret as _;
        let bubble = token_from(br#"{"status":"success","response":{"token":"t1"}}"#).unwrap();
        assert_eq!(bubble.expose_secret(), "t1");
        assert_eq!(
            token_from(br#"{"token":"t2"}"#).unwrap().expose_secret(),
            "t2"
        );
        assert!(token_from(br#"{"response":{}}"#).is_none());
    }
}

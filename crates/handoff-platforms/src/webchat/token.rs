//! The visitor token: who a browser is, signed by the hub.
//!
//! `<claims>.<mac>`, both base64url: the claims are JSON (visitor id, org, channel, expiry,
//! the profile the page gave), the MAC is HMAC-SHA256 over the claims with the channel's
//! key. A token of another channel, one edited by hand or one past its expiry is refused;
//! the browser then starts as a new visitor.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorToken {
    /// The visitor: the member's `externalId` on this channel.
    #[serde(rename = "v")]
    pub visitor: Uuid,
    #[serde(rename = "o")]
    pub org: String,
    #[serde(rename = "c")]
    pub channel: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub expires: i64,
    /// The profile the page gave at the start (`firstName`, …), sent with each message.
    #[serde(rename = "p", default)]
    pub profile: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not one this hub issued")]
    Forged,
    #[error("the token has expired")]
    Expired,
    #[error("the token belongs to another chat")]
    OtherChannel,
}

fn mac(key: &[u8], claims: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(b"handoff-webchat-visitor\n");
    mac.update(claims.as_bytes());
    mac
}

impl VisitorToken {
    /// A new visitor of `org`/`channel`, valid `ttl_secs` from `now`.
    pub fn new(
        org: &str,
        channel: &str,
        now: i64,
        ttl_secs: u64,
        profile: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        Self {
            visitor: Uuid::new_v4(),
            org: org.to_string(),
            channel: channel.to_string(),
            expires: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            profile,
        }
    }

    pub fn sign(&self, key: &[u8]) -> String {
        let claims = B64.encode(serde_json::to_vec(self).expect("claims serialize"));
        let tag = B64.encode(mac(key, &claims).finalize().into_bytes());
        format!("{claims}.{tag}")
    }

    /// The token's claims, if `key` signed it for `org`/`channel` and it has not expired
    /// at `now`.
    pub fn verify(
        token: &str,
        key: &[u8],
        org: &str,
        channel: &str,
        now: i64,
    ) -> Result<Self, TokenError> {
        let (claims, tag) = token.split_once('.').ok_or(TokenError::Forged)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Forged)?;
        // Constant time: a MAC compared byte by byte leaks how much of a guess was right.
        mac(key, claims)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        let bytes = B64.decode(claims).map_err(|_| TokenError::Forged)?;
        let token: Self = serde_json::from_slice(&bytes).map_err(|_| TokenError::Forged)?;
        if token.org != org || token.channel != channel {
            return Err(TokenError::OtherChannel);
        }
        if token.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a-channel-secret-of-some-length";
    const NOW: i64 = 1_800_000_000;

    fn token() -> VisitorToken {
        VisitorToken::new("acme", "web", NOW, 3600, Default::default())
    }

    #[test]
    fn a_token_the_hub_signed_names_its_visitor() {
        let t = token();
        let signed = t.sign(KEY);
        assert_eq!(
            VisitorToken::verify(&signed, KEY, "acme", "web", NOW + 10),
            Ok(t)
        );
    }

    #[test]
    fn a_token_with_its_visitor_changed_is_forged() {
        let signed = token().sign(KEY);
        let (_, tag) = signed.split_once('.').unwrap();
        let mut other = token();
        other.visitor = Uuid::new_v4();
        let claims = B64.encode(serde_json::to_vec(&other).unwrap());
        let forged = format!("{claims}.{tag}");
        assert_eq!(
            VisitorToken::verify(&forged, KEY, "acme", "web", NOW),
            Err(TokenError::Forged)
        );
        assert_eq!(
            VisitorToken::verify(&signed, b"another-key-entirely-here", "acme", "web", NOW),
            Err(TokenError::Forged)
        );
        for junk in ["", ".", "abc", "abc.def", "%%.%%"] {
            assert_eq!(
                VisitorToken::verify(junk, KEY, "acme", "web", NOW),
                Err(TokenError::Forged),
                "{junk}"
            );
        }
    }

    #[test]
    fn an_expired_token_is_refused() {
        let signed = token().sign(KEY);
        assert_eq!(
            VisitorToken::verify(&signed, KEY, "acme", "web", NOW + 3600),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn another_channels_token_is_refused_even_with_the_same_key() {
        let signed = token().sign(KEY);
        assert_eq!(
            VisitorToken::verify(&signed, KEY, "acme", "web2", NOW),
            Err(TokenError::OtherChannel)
        );
        assert_eq!(
            VisitorToken::verify(&signed, KEY, "other", "web", NOW),
            Err(TokenError::OtherChannel)
        );
    }
}

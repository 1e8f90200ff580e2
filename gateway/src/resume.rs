//! Session resume tokens: `base64url(session_id ‖ user_id ‖ expires_ms ‖
//! HMAC-SHA256(secret, those 24 bytes)[..16])`. Any gateway that shares the
//! fleet secret can verify a token minted by another, so a client told to
//! GOAWAY keeps its session id on the next gateway.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gg_runtime::clock::now_ms;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ResumeSettings;

const BODY: usize = 24;
const TAG: usize = 16;

/// What a valid token proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) session_id: u64,
    pub(crate) user_id: u64,
    pub(crate) expires_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ResumeError {
    #[error("resume token is malformed")]
    Malformed,
    #[error("resume token signature is invalid (forged, or minted with another fleet secret)")]
    BadSignature,
    #[error("resume token expired")]
    Expired,
    #[error("resume token is for another session or user")]
    Mismatch,
    #[error("resume token was already used (each WELCOME carries a fresh one)")]
    Used,
}

pub(crate) struct ResumeKeys {
    settings: ResumeSettings,
    /// Tags of tokens already redeemed here, with their expiry: a token
    /// resumes a session once. Pruned as they expire.
    used: parking_lot::Mutex<std::collections::HashMap<[u8; TAG], u64>>,
}

/// Redeemed tokens remembered at most (each ~40 bytes); beyond it the
/// oldest-expiring are forgotten first, after every expired one.
const MAX_USED: usize = 1 << 20;

impl ResumeKeys {
    pub(crate) fn new(settings: ResumeSettings) -> ResumeKeys {
        ResumeKeys {
            settings,
            used: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.settings.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(body);
        m
    }

    /// Mints a token for `session_id`/`user_id`, valid for the configured TTL.
    pub(crate) fn mint(&self, session_id: u64, user_id: u64) -> String {
        let expires = now_ms() + self.settings.ttl.as_millis() as u64;
        self.mint_at(session_id, user_id, expires)
    }

    fn mint_at(&self, session_id: u64, user_id: u64, expires_ms: u64) -> String {
        let mut buf = Vec::with_capacity(BODY + TAG);
        buf.extend_from_slice(&session_id.to_be_bytes());
        buf.extend_from_slice(&user_id.to_be_bytes());
        buf.extend_from_slice(&expires_ms.to_be_bytes());
        let tag = self.mac(&buf).finalize().into_bytes();
        buf.extend_from_slice(&tag[..TAG]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Verifies a token (see [`ResumeKeys::verify`]) and marks it used: a
    /// second resume with the same token on this gateway is refused.
    pub(crate) fn redeem(
        &self,
        token: &str,
        session_id: u64,
        user_id: u64,
    ) -> Result<Claims, ResumeError> {
        let claims = self.verify(token, session_id, user_id)?;
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ResumeError::Malformed)?;
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&raw[BODY..]);
        let mut used = self.used.lock();
        if used.len() >= MAX_USED {
            let now = now_ms();
            used.retain(|_, exp| *exp >= now);
            if used.len() >= MAX_USED
                && let Some(oldest) = used.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
            {
                used.remove(&oldest);
            }
        }
        if used.insert(tag, claims.expires_ms).is_some() {
            return Err(ResumeError::Used);
        }
        Ok(claims)
    }

    /// Verifies a token for the session id (and, when non-zero, user id)
    /// the client claims. The tag is compared in constant time.
    pub(crate) fn verify(
        &self,
        token: &str,
        session_id: u64,
        user_id: u64,
    ) -> Result<Claims, ResumeError> {
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| ResumeError::Malformed)?;
        if raw.len() != BODY + TAG {
            return Err(ResumeError::Malformed);
        }
        let (body, tag) = raw.split_at(BODY);
        self.mac(body)
            .verify_truncated_left(tag)
            .map_err(|_| ResumeError::BadSignature)?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        let claims = Claims {
            session_id: word(0),
            user_id: word(1),
            expires_ms: word(2),
        };
        if claims.expires_ms < now_ms() {
            return Err(ResumeError::Expired);
        }
        if claims.session_id != session_id || (user_id != 0 && claims.user_id != user_id) {
            return Err(ResumeError::Mismatch);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(secret: &[u8]) -> ResumeKeys {
        ResumeKeys::new(ResumeSettings {
            secret: secret.to_vec(),
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let k = keys(b"fleet-secret-0123456789");
        let t = k.mint(7, 42);
        assert_eq!(k.verify(&t, 7, 42).unwrap().user_id, 42);
        assert_eq!(
            k.verify(&t, 7, 0).unwrap().session_id,
            7,
            "user 0 = take the token's"
        );
        assert_eq!(k.verify(&t, 8, 42), Err(ResumeError::Mismatch));
        assert_eq!(k.verify(&t, 7, 43), Err(ResumeError::Mismatch));
        assert_eq!(
            keys(b"another-secret-0123456").verify(&t, 7, 42),
            Err(ResumeError::BadSignature)
        );
        assert_eq!(k.verify("not base64!", 7, 42), Err(ResumeError::Malformed));
        // Redeemed once, then refused; another token for the session works.
        assert!(k.redeem(&t, 7, 42).is_ok());
        assert_eq!(k.redeem(&t, 7, 42), Err(ResumeError::Used));
        let t2 = k.mint_at(7, 42, now_ms() + 61_000);
        assert!(k.redeem(&t2, 7, 42).is_ok());
        assert_eq!(k.redeem(&t, 8, 42), Err(ResumeError::Mismatch));
        let expired = k.mint_at(7, 42, 1);
        assert_eq!(k.verify(&expired, 7, 42), Err(ResumeError::Expired));
        // Flipping any byte breaks the signature.
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[3] ^= 1;
        assert_eq!(
            k.verify(&URL_SAFE_NO_PAD.encode(raw), 7, 42),
            Err(ResumeError::BadSignature)
        );
    }
}

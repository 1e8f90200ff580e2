//! Client authentication: a JWT names the user. TCP and WebSocket clients
//! put it in HELLO's `token`; HTTP calls send `Authorization: Bearer <jwt>`.
//! The token is checked once, when the session opens (signature, `exp`,
//! `nbf`, and `iss` / `aud` when configured); the session's `user_id` is
//! the one the token names, so a client cannot act as another user. A
//! resume is proven by its resume token instead (bound to session and user).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Why a client's credentials were refused (close 3505 / HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error(
        "authentication required: send a JWT in HELLO's `token` (HTTP calls: `Authorization: Bearer <jwt>`)"
    )]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token has no usable `{0}` claim (the user id: a decimal string or a number > 0)")]
    NoUser(String),
    #[error("the token is for user {token}, but the request claims user {claimed}")]
    Mismatch { token: u64, claimed: u64 },
}

/// A verifier built from the `client_auth:` config section.
pub(crate) struct ClientAuth {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(
            f,
            "ClientAuth({:?}, user_claim={})",
            self.validation.algorithms, self.user_claim
        )
    }
}

/// Algorithms accepted in `client_auth.algorithm`.
pub(crate) fn parse_algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Whether `alg` is verified with a shared secret (else a public key).
pub(crate) fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

impl ClientAuth {
    /// `key` is the shared secret (HS*) or a PEM public key (RS*, ES*, EdDSA).
    pub(crate) fn new(
        alg: Algorithm,
        key: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
        user_claim: &str,
        leeway_s: u64,
    ) -> Result<ClientAuth, String> {
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => DecodingKey::from_secret(key),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                DecodingKey::from_rsa_pem(key).map_err(|e| format!("not an RSA public key: {e}"))?
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(key).map_err(|e| format!("not an EC public key: {e}"))?
            }
            Algorithm::EdDSA => DecodingKey::from_ed_pem(key)
                .map_err(|e| format!("not an Ed25519 public key: {e}"))?,
            other => return Err(format!("algorithm {other:?} is not supported")),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = leeway_s;
        validation.validate_nbf = true;
        match issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        Ok(ClientAuth {
            key,
            validation,
            user_claim: user_claim.to_string(),
        })
    }

    /// Verifies `token` and returns the user id it names. `claimed` (0 =
    /// none) is the user id the client put in its HELLO or `x-user-id`; it
    /// must match.
    pub(crate) fn verify(&self, token: Option<&str>, claimed: u64) -> Result<u64, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let user = match data.claims.get(&self.user_claim) {
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        }
        .filter(|u| *u != 0)
        .ok_or_else(|| AuthError::NoUser(self.user_claim.clone()))?;
        if claimed != 0 && claimed != user {
            return Err(AuthError::Mismatch {
                token: user,
                claimed,
            });
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn token(claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn auth() -> ClientAuth {
        ClientAuth::new(Algorithm::HS256, SECRET, Some("idp"), None, "sub", 0).unwrap()
    }

    #[test]
    fn a_valid_token_names_the_user() {
        let t = token(
            json!({"sub": "42", "exp": now() + 60, "iss": "idp"}),
            SECRET,
        );
        assert_eq!(auth().verify(Some(&t), 0), Ok(42));
        assert_eq!(auth().verify(Some(&t), 42), Ok(42));
        assert_eq!(
            auth().verify(Some(&t), 7),
            Err(AuthError::Mismatch {
                token: 42,
                claimed: 7
            })
        );
        let numeric = token(json!({"sub": 9, "exp": now() + 60, "iss": "idp"}), SECRET);
        assert_eq!(auth().verify(Some(&numeric), 0), Ok(9));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let a = auth();
        assert_eq!(a.verify(None, 0), Err(AuthError::Missing));
        let expired = token(
            json!({"sub": "42", "exp": now() - 120, "iss": "idp"}),
            SECRET,
        );
        assert!(
            matches!(a.verify(Some(&expired), 0), Err(AuthError::Invalid(m)) if m.contains("xpired"))
        );
        let forged = token(
            json!({"sub": "42", "exp": now() + 60, "iss": "idp"}),
            b"another-secret-0123456789abcdef",
        );
        assert!(matches!(
            a.verify(Some(&forged), 0),
            Err(AuthError::Invalid(_))
        ));
        let wrong_iss = token(
            json!({"sub": "42", "exp": now() + 60, "iss": "evil"}),
            SECRET,
        );
        assert!(matches!(
            a.verify(Some(&wrong_iss), 0),
            Err(AuthError::Invalid(_))
        ));
        let no_user = token(json!({"exp": now() + 60, "iss": "idp"}), SECRET);
        assert_eq!(
            a.verify(Some(&no_user), 0),
            Err(AuthError::NoUser("sub".into()))
        );
        assert!(matches!(
            a.verify(Some("not.a.jwt"), 0),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_public_key_that_is_not_pem_is_a_config_error() {
        assert!(ClientAuth::new(Algorithm::RS256, b"nope", None, None, "sub", 0).is_err());
        assert!(parse_algorithm("none").is_none());
        assert!(is_hmac(parse_algorithm("HS256").unwrap()));
    }
}

//! `client_auth:` — clients prove their user with a JWT. Absent = the
//! `user_id` a client claims is trusted (a trusted network only).

use std::sync::Arc;

use gg_runtime::auth::read_secret;
use serde::Deserialize;

use super::Errors;
use crate::client_auth::{ClientAuth, is_hmac, parse_algorithm};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientAuth {
    #[serde(default = "default_jwt_algorithm")]
    pub algorithm: String,
    /// HS*: the shared secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    /// RS*, ES*, EdDSA: the PEM public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_jwt_algorithm() -> String {
    "HS256".into()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

impl FileClientAuth {
    pub(super) fn validate(&self, errs: &mut Errors) -> Option<Arc<ClientAuth>> {
        let a = self;
        let Some(alg) = parse_algorithm(&a.algorithm) else {
            errs.push(format!(
                "client_auth.algorithm {:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA",
                a.algorithm
            ));
            return None;
        };
        let key = if is_hmac(alg) {
            self.secret(errs)?
        } else {
            self.public_key(errs)?
        };
        if a.user_claim.is_empty() {
            errs.push("client_auth.user_claim must not be empty".into());
            return None;
        }
        ClientAuth::new(
            alg,
            &key,
            a.issuer.as_deref(),
            a.audience.as_deref(),
            &a.user_claim,
            a.leeway_s,
        )
        .map(Arc::new)
        .map_err(|e| errs.push(format!("client_auth: {e}")))
        .ok()
    }

    /// HS*: the shared secret, from `secret_env` or `secret_file`.
    fn secret(&self, errs: &mut Errors) -> Option<Vec<u8>> {
        if self.public_key_file.is_some() {
            errs.push(format!(
                "client_auth.public_key_file is for RS*/ES*/EdDSA; {} uses secret_env or secret_file",
                self.algorithm
            ));
            return None;
        }
        read_secret(
            "client_auth",
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
            None,
            errs,
        )
    }

    /// RS*, ES*, EdDSA: the PEM public key from `public_key_file`.
    fn public_key(&self, errs: &mut Errors) -> Option<Vec<u8>> {
        if self.secret_env.is_some() || self.secret_file.is_some() {
            errs.push(format!(
                "client_auth: {} verifies with public_key_file, not a secret",
                self.algorithm
            ));
            return None;
        }
        let Some(path) = &self.public_key_file else {
            errs.push(format!(
                "client_auth.public_key_file is required for {}",
                self.algorithm
            ));
            return None;
        };
        std::fs::read(path)
            .map_err(|e| {
                errs.push(format!(
                    "client_auth.public_key_file: cannot read {path}: {e}"
                ))
            })
            .ok()
    }
}

//! Bearer tokens with scopes (read < operate < admin) for both gRPC APIs:
//! the file shape ([`FileToken`]), resolving secrets from env / file /
//! value ([`read_tokens`], [`read_secret`]), constant-time authentication
//! ([`authenticate`], with `subtle`), the tonic interceptor that attaches
//! the [`Caller`], and the per-RPC scope check ([`require`]).
//!
//! Secrets never appear in `Debug` output, logs or error messages.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Shortest accepted bearer token or shared secret.
pub const MIN_SECRET_BYTES: usize = 16;

/// Access level of a token; each level includes the ones below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }
}

/// One token as written in a config file: exactly one of `env`, `file` or
/// `value` holds the secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileToken {
    pub name: String,
    pub scope: String,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A resolved bearer token. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub scope: Scope,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, {})", self.name, self.scope.name())
    }
}

/// Resolves a list of tokens; problems go to `errs` prefixed with `key`.
pub fn read_tokens(key: &str, list: &[FileToken], errs: &mut Vec<String>) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut names = HashSet::new();
    for t in list {
        let at = format!("{key}[{}]", t.name);
        if !names.insert(t.name.clone()) {
            errs.push(format!("{at}: duplicate token name"));
        }
        let Some(scope) = Scope::parse(&t.scope) else {
            errs.push(format!(
                "{at}: scope {:?} must be read, operate or admin",
                t.scope
            ));
            continue;
        };
        if let Some(secret) = read_secret(
            &at,
            t.env.as_deref(),
            t.file.as_deref(),
            t.value.as_deref(),
            errs,
        ) {
            tokens.push(Token {
                name: t.name.clone(),
                scope,
                secret,
            });
        }
    }
    tokens
}

/// Reads a secret from exactly one of env / file / literal value, at least
/// [`MIN_SECRET_BYTES`] long. The secret never appears in an error.
pub fn read_secret(
    at: &str,
    env: Option<&str>,
    file: Option<&str>,
    value: Option<&str>,
    errs: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let secret = match (env, file, value) {
        (Some(var), None, None) => match std::env::var(var) {
            Ok(v) => v,
            Err(_) => {
                errs.push(format!("{at}: environment variable {var} is not set"));
                return None;
            }
        },
        (None, Some(path), None) => match std::fs::read_to_string(path) {
            Ok(v) => v.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                errs.push(format!("{at}: cannot read secret file {path}: {e}"));
                return None;
            }
        },
        (None, None, Some(v)) => v.to_string(),
        _ => {
            errs.push(format!("{at}: set exactly one of env, file or value"));
            return None;
        }
    };
    if secret.len() < MIN_SECRET_BYTES {
        errs.push(format!(
            "{at}: secret is shorter than {MIN_SECRET_BYTES} bytes"
        ));
        return None;
    }
    Some(secret.into_bytes())
}

/// Who is calling, attached to each request by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

/// Authenticates a request from its `authorization: Bearer …` header.
/// Every configured token is compared in constant time (no early exit),
/// and the token is never logged.
pub fn authenticate(tokens: &[Token], header: Option<&str>) -> Result<Caller, Status> {
    if tokens.is_empty() {
        // Only possible on a loopback listener (config validation).
        return Ok(Caller {
            name: "anonymous-loopback".into(),
            scope: Scope::Admin,
        });
    }
    let Some(value) = header else {
        return Err(Status::unauthenticated(
            "missing credentials: send the header `authorization: Bearer <token>`",
        ));
    };
    let Some(presented) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(Status::unauthenticated(
            "authorization header must be `Bearer <token>`",
        ));
    };
    let mut found: Option<&Token> = None;
    for t in tokens {
        // `ct_eq` on slices of different lengths is false, and takes time
        // independent of the contents.
        let eq: bool = presented.as_bytes().ct_eq(&t.secret).into();
        if eq && found.is_none() {
            found = Some(t);
        }
    }
    found
        .map(|t| Caller {
            name: t.name.clone(),
            scope: t.scope,
        })
        .ok_or_else(|| Status::unauthenticated("invalid token: check the token for this server"))
}

/// A tonic interceptor that authenticates every call and attaches the
/// [`Caller`] for [`require`].
pub fn auth_interceptor(
    tokens: Arc<[Token]>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = authenticate(&tokens, header)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// Fails with PERMISSION_DENIED unless the caller's scope covers `need`.
pub fn require<T>(req: &Request<T>, need: Scope) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request was not authenticated"))?;
    if caller.scope < need {
        return Err(Status::permission_denied(format!(
            "token {:?} has scope {}, this call needs {}",
            caller.name,
            caller.scope.name(),
            need.name()
        )));
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<Token> {
        vec![
            Token {
                name: "reader".into(),
                scope: Scope::Read,
                secret: b"read-token-0123456789".to_vec(),
            },
            Token {
                name: "op".into(),
                scope: Scope::Operate,
                secret: b"operate-token-0123456789".to_vec(),
            },
        ]
    }

    #[test]
    fn tokens_authenticate_with_their_scope() {
        let t = tokens();
        let c = authenticate(&t, Some("Bearer operate-token-0123456789")).unwrap();
        assert_eq!((c.name.as_str(), c.scope), ("op", Scope::Operate));
        for bad in [
            None,
            Some("operate-token-0123456789"),
            Some("Bearer nope"),
            Some("Bearer operate-token-012345678"),
            Some("Bearer operate-token-01234567890"),
        ] {
            let e = authenticate(&t, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(
                !e.message().contains("0123456789"),
                "secret echoed: {}",
                e.message()
            );
        }
    }

    #[test]
    fn scope_check() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller {
            name: "reader".into(),
            scope: Scope::Read,
        });
        assert!(require(&req, Scope::Read).is_ok());
        assert_eq!(
            require(&req, Scope::Operate).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            require(&Request::new(()), Scope::Read).unwrap_err().code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn token_files_report_every_problem_without_the_secret() {
        let t = |name: &str, scope: &str, value: Option<&str>, env: Option<&str>| FileToken {
            name: name.into(),
            scope: scope.into(),
            env: env.map(Into::into),
            file: None,
            value: value.map(Into::into),
        };
        let mut errs = Vec::new();
        let ok = read_tokens(
            "tokens",
            &[
                t("a", "root", Some("long-enough-secret-1"), None),
                t("b", "read", Some("short"), None),
                t("c", "read", Some("long-enough-secret-2"), Some("X")),
                t("d", "read", None, Some("GG_TEST_SURELY_UNSET_VAR")),
                t("e", "admin", Some("long-enough-secret-3"), None),
                t("e", "admin", Some("long-enough-secret-4"), None),
            ],
            &mut errs,
        );
        let all = errs.join("\n");
        for needle in [
            "tokens[a]: scope \"root\"",
            "tokens[b]: secret is shorter than 16",
            "tokens[c]: set exactly one of env, file or value",
            "GG_TEST_SURELY_UNSET_VAR is not set",
            "tokens[e]: duplicate token name",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
        assert!(!all.contains("long-enough-secret"), "{all}");
        assert_eq!(ok.len(), 2);
        assert!(!format!("{ok:?}").contains("long-enough"));
    }
}

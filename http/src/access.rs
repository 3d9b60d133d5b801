//! Who may use port 8068 (SPEC §6): clients in `api.allow`, and, when `api.users` is not
//! empty, only with HTTP Basic credentials of one of them. Passwords are argon2id hashes
//! (PHC strings made by `sipedge hash-password`); argon2 is slow by design, so checks run on
//! the blocking pool, a few at a time, and a verified pair is remembered briefly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::json_error;

/// How long a verified name and password are trusted without running argon2 again.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Remembered pairs at most; past that the cache starts over.
const CACHE_MAX: usize = 1024;
/// argon2 checks at once: each takes a core for tens of milliseconds, so a client guessing
/// passwords cannot take every core from the rest of the process.
const CONCURRENT_CHECKS: usize = 2;
/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "sipedge";

/// One `[[api.users]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    /// The Basic-auth user name.
    pub name: String,
    /// An argon2id PHC string, as `sipedge hash-password` prints.
    pub password_hash: String,
}

/// Whether a hash is one this build can check; the error names what is wrong.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not a PHC hash string ({e}); make one with sipedge hash-password"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!(
            "the algorithm is {}, argon2id is required; make one with sipedge hash-password",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// The PHC string of `password` with a fresh random salt (argon2id, the crate's defaults).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt =
        SaltString::encode_b64(&bytes).map_err(|e| format!("cannot encode the salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// 32 random bytes, e.g. for a signing key.
pub fn random_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(key)
}

/// The access rules of the API listener, shared by every request.
#[derive(Debug)]
pub struct Access {
    /// `api.allow` and `api.users`, replaced whole by a reload (SIGHUP) while requests run.
    rules: RwLock<Arc<Rules>>,
    /// SHA-256 of a verified `name:password` → when it stops being trusted.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Limits the argon2 checks running at once.
    checks: Arc<Semaphore>,
}

/// One version of the configured rules.
#[derive(Debug)]
struct Rules {
    /// Client networks that may connect at all.
    allow: Vec<IpNet>,
    /// By name; empty means no credentials are asked for.
    users: HashMap<String, String>,
    /// Checked for names that are no user, so that the time taken does not tell which
    /// names exist.
    decoy: String,
}

impl Rules {
    fn new(allow: Vec<IpNet>, users: &[ApiUser]) -> Self {
        Rules {
            allow,
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password_hash.clone()))
                .collect(),
            decoy: users
                .first()
                .and_then(|_| random_key().ok())
                .and_then(|key| hash_password(&hex::encode(key)).ok())
                .unwrap_or_default(),
        }
    }
}

impl Access {
    pub fn new(allow: Vec<IpNet>, users: &[ApiUser]) -> Self {
        Access {
            rules: RwLock::new(Arc::new(Rules::new(allow, users))),
            verified: Mutex::new(HashMap::new()),
            checks: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
        }
    }

    /// Applies new rules from the next request on. Remembered passwords are forgotten, so
    /// that a removed user or a changed password stops working at once.
    pub fn replace(&self, allow: Vec<IpNet>, users: &[ApiUser]) {
        let rules = Arc::new(Rules::new(allow, users));
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = rules;
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `ip` is in an allowed network (an IPv4 client seen on an IPv6 socket counts
    /// as its IPv4 address).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.rules().allow.iter().any(|net| net.contains(&ip))
    }

    /// Whether the request's `Authorization` header names a user with the right password;
    /// `true` when no users are configured.
    async fn authenticated(&self, authorization: Option<&HeaderValue>) -> bool {
        let rules = self.rules();
        if rules.users.is_empty() {
            return true;
        }
        let Some((name, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let now = Instant::now();
        {
            let cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.get(&key).is_some_and(|until| *until > now) {
                return true;
            }
        }
        let known = rules.users.get(&name);
        let hash = known.unwrap_or(&rules.decoy).clone();
        let Ok(_permit) = self.checks.clone().acquire_owned().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
            && known.is_some();
        if ok {
            let mut cache = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, now + CACHE_TTL);
        }
        ok
    }
}

/// `Basic base64(name:password)` → (name, password).
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// The middleware: 403 outside `api.allow`, then 401 without valid credentials (except for
/// `/healthz`, which the F5 probes without any).
pub async fn guard(
    State(access): State<Arc<Access>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !access.allows(client.ip()) {
        tracing::info!(%client, path = %request.uri().path(), "API client outside api.allow refused");
        return json_error(
            StatusCode::FORBIDDEN,
            "this client's address is not in api.allow",
        );
    }
    if request.uri().path() != "/healthz"
        && !access
            .authenticated(request.headers().get(header::AUTHORIZATION))
            .await
    {
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "valid credentials of an api.users entry are needed (HTTP Basic)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sipedge\", charset=\"UTF-8\""),
        );
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_credentials(header: &str, expected: Option<(&str, &str)>) {
        let got = basic_credentials(&HeaderValue::from_str(header).unwrap());
        let expected = expected.map(|(n, p)| (n.to_owned(), p.to_owned()));
        assert_eq!(got, expected, "{header}");
    }

    #[test]
    fn basic_credentials_table() {
        // "ops:s3cret:with colon" and "ops:" in base64.
        check_credentials(
            "Basic b3BzOnMzY3JldDp3aXRoIGNvbG9u",
            Some(("ops", "s3cret:with colon")),
        );
        check_credentials("basic b3BzOg==", Some(("ops", "")));
        check_credentials("Bearer b3BzOg==", None);
        check_credentials("Basic !!!", None);
        check_credentials("Basic bm9jb2xvbg==", None);
        check_credentials("Basic", None);
    }

    #[test]
    fn allow_table() {
        let access = Access::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            &[],
        );
        for (ip, expected) in [
            ("127.0.0.1", true),
            ("10.1.200.3", true),
            ("10.2.0.1", false),
            ("::ffff:127.0.0.1", true),
            ("::1", false),
        ] {
            assert_eq!(access.allows(ip.parse().unwrap()), expected, "{ip}");
        }
    }

    #[test]
    fn hashes_are_argon2id_and_checked() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_eq!(check_hash(&hash), Ok(()));
        assert!(check_hash("plain text").unwrap_err().contains("PHC"));
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$gfNYuxJtR3qmYqCg7tB7LQ";
        assert!(check_hash(argon2i).unwrap_err().contains("argon2id"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
    }

    #[tokio::test]
    async fn verification_accepts_the_password_and_remembers_it() {
        let hash = hash_password("pw").unwrap();
        let access = Access::new(
            vec![],
            &[ApiUser {
                name: "ops".into(),
                password_hash: hash,
            }],
        );
        let header = |user_pw: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pw)
            ))
            .unwrap()
        };
        assert!(!access.authenticated(None).await);
        assert!(!access.authenticated(Some(&header("ops:wrong"))).await);
        assert!(!access.authenticated(Some(&header("nobody:pw"))).await);
        assert!(access.authenticated(Some(&header("ops:pw"))).await);
        assert_eq!(access.verified.lock().unwrap().len(), 1);
        assert!(access.authenticated(Some(&header("ops:pw"))).await);
        let open = Access::new(vec![], &[]);
        assert!(open.authenticated(None).await);
    }
}

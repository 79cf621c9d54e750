//! Logged-in users' sessions and the logins under way, both held in memory: a session is a
//! random id in a `Secure; HttpOnly; SameSite=Lax` cookie, ended by logout, by the
//! provider's back-channel logout, by inactivity or when its tokens expire.

use super::token::TokenUser;
use crate::server::Identity;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The session cookie's name; `__Host-` makes browsers keep it to this host, over HTTPS,
/// for every path.
pub(crate) const SESSION_COOKIE: &str = "__Host-dsf-session";
/// The cookie that ties a login's answer to the browser that started it.
pub(crate) const LOGIN_COOKIE: &str = "__Host-dsf-login";

/// Sessions and pending logins beyond these counts push out the oldest.
const MAX_SESSIONS: usize = 10_000;
const MAX_PENDING_LOGINS: usize = 1_000;
/// How long a login may take at the provider.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

/// 32 random bytes, base64url: session ids, states, nonces and PKCE verifiers.
pub(crate) fn random_token() -> crate::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| crate::Error::storage_fault("the system's random source failed"))?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        bytes,
    ))
}

/// `BASE64URL(SHA-256(verifier))`, PKCE's `S256` challenge.
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        digest.as_ref(),
    )
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
}

/// A `Set-Cookie` value for `name`, kept `max_age` or while the browser runs; no value
/// deletes it. `SameSite=Lax`, not `Strict`: the provider's redirect back is a cross-site
/// navigation, and must carry the login cookie.
pub(crate) fn set_cookie(name: &str, value: Option<&str>, max_age: Option<Duration>) -> String {
    let attributes = "Path=/; Secure; HttpOnly; SameSite=Lax";
    match (value, max_age) {
        (Some(value), Some(age)) => {
            format!("{name}={value}; {attributes}; Max-Age={}", age.as_secs())
        }
        (Some(value), None) => format!("{name}={value}; {attributes}"),
        (None, _) => format!("{name}=; {attributes}; Max-Age=0"),
    }
}

/// One logged-in user.
pub(crate) struct Session {
    pub id: String,
    pub user: TokenUser,
    /// The ID token, sent back to the provider as the hint at logout.
    pub id_token: String,
    last_seen: Mutex<Instant>,
    /// The identity, with the allow-list generation it was resolved at.
    identity: Mutex<Option<(u64, Arc<Identity>)>>,
}

impl Session {
    pub(crate) fn new(id: String, user: TokenUser, id_token: String) -> Session {
        Session {
            id,
            user,
            id_token,
            last_seen: Mutex::new(Instant::now()),
            identity: Mutex::new(None),
        }
    }

    /// The identity resolved at allow-list generation `generation`, if it was.
    pub(crate) fn identity_at(&self, generation: u64) -> Option<Arc<Identity>> {
        let cached = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, identity)| identity.clone())
    }

    pub(crate) fn remember_identity(&self, generation: u64, identity: Arc<Identity>) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, identity));
    }

    fn expired(&self, idle_timeout: Duration) -> bool {
        let idle = self
            .last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        idle > idle_timeout || self.user.expires.is_some_and(|exp| exp <= now)
    }
}

/// The sessions of this server.
pub(crate) struct Sessions {
    idle_timeout: Duration,
    by_id: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub(crate) fn new(idle_timeout: Duration) -> Sessions {
        Sessions {
            idle_timeout,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn insert(&self, session: Session) -> Arc<Session> {
        let session = Arc::new(session);
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| !s.expired(self.idle_timeout));
            if map.len() >= MAX_SESSIONS {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, s)| *s.last_seen.lock().unwrap_or_else(|p| p.into_inner()))
                    .map(|(id, _)| id.clone());
                if let Some(id) = oldest {
                    map.remove(&id);
                }
            }
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session `id`, marked as seen now; an expired one is ended.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let session = map.get(id)?.clone();
        if session.expired(self.idle_timeout) {
            map.remove(id);
            return None;
        }
        *session.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(session)
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    /// Ends the sessions of the provider session `sid`, or, without one, of the user `sub`;
    /// returns how many ended.
    pub(crate) fn remove_matching(&self, sid: Option<&str>, sub: Option<&str>) -> usize {
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, s| match (sid, sub) {
            (Some(sid), _) => s.user.session.as_deref() != Some(sid),
            (None, Some(sub)) => s.user.subject != sub,
            (None, None) => true,
        });
        before - map.len()
    }
}

/// A login sent to the provider and not yet back.
pub(crate) struct PendingLogin {
    pub verifier: String,
    pub nonce: String,
    /// The page to show once logged in (a path below the server).
    pub return_to: String,
    started: Instant,
}

impl PendingLogin {
    pub(crate) fn new(verifier: String, nonce: String, return_to: String) -> PendingLogin {
        PendingLogin {
            verifier,
            nonce,
            return_to,
            started: Instant::now(),
        }
    }
}

/// Logins under way, by their `state`.
#[derive(Default)]
pub(crate) struct PendingLogins {
    by_state: Mutex<HashMap<String, PendingLogin>>,
}

impl PendingLogins {
    pub(crate) fn insert(&self, state: String, login: PendingLogin) {
        let mut map = self.by_state.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, l| l.started.elapsed() < LOGIN_TIMEOUT);
        if map.len() >= MAX_PENDING_LOGINS {
            let oldest = map
                .iter()
                .min_by_key(|(_, l)| l.started)
                .map(|(s, _)| s.clone());
            if let Some(state) = oldest {
                map.remove(&state);
            }
        }
        map.insert(state, login);
    }

    /// The login `state` names, once: a state is never accepted twice.
    pub(crate) fn take(&self, state: &str) -> Option<PendingLogin> {
        self.by_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(state)
            .filter(|l| l.started.elapsed() < LOGIN_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_pkce_matches_rfc_7636() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "a=1; __Host-dsf-session=xyz".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let user = TokenUser {
            subject: "u".into(),
            session: Some("s".into()),
            ..TokenUser::default()
        };
        let sessions = Sessions::new(Duration::from_secs(60));
        sessions.insert(Session::new("id".into(), user, String::new()));
        assert!(sessions.get("id").is_some());
        assert_eq!(sessions.remove_matching(Some("other"), None), 0);
        assert_eq!(sessions.remove_matching(Some("s"), None), 1);
        assert!(sessions.get("id").is_none());
    }
}

//! Requests without a client certificate, when OpenID Connect is on: the login's return
//! (`<base>/_oidc/callback`), back-channel logout, bearer tokens, session cookies, and the
//! redirect that starts a login for a browser that has none of these.

use super::provider::form_encode;
use super::session::{self, PendingLogin, Session, LOGIN_COOKIE, SESSION_COOKIE};
use super::token::{self, Expect, TokenUser};
use super::Oidc;
use crate::search::parse_query_string;
use crate::server::caller::Principal;
use crate::server::identity;
use crate::server::reply::{refused, Reply};
use crate::server::request_body::read_body;
use crate::server::{ui, FhirServer, Identity, ResponseBody};
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::ErrorChain;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Where the provider sends the browser back to, below the base URL.
pub(crate) const CALLBACK_PATH: &str = "_oidc/callback";

/// The event a back-channel logout token carries.
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Largest back-channel logout request body.
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// How long a login may take at the provider; its cookie lives as long.
const LOGIN_COOKIE_AGE: Duration = Duration::from_secs(600);

/// Who a request without certificate turned out to be.
pub(crate) enum OidcCaller {
    /// A browser with a live session.
    Session(Arc<Session>),
    /// An API client with a valid bearer token.
    Bearer(Arc<Identity>),
}

fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

fn add_cookie(response: &mut Response<ResponseBody>, cookie: String) {
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, value);
    }
}

impl FhirServer {
    /// A request without a client certificate: answered if OpenID Connect knows its caller
    /// (or it is the provider's own call), sent to log in if it is a browser's, else refused
    /// with `refusal`.
    pub(crate) async fn respond_without_certificate<B>(
        &self,
        req: Request<B>,
        refusal: Error,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let Some(oidc) = &self.oidc else {
            return refused(req.headers(), &refusal);
        };
        let path = self.path_below(req.uri().path()).unwrap_or("").to_owned();
        let code_flow = oidc.config.authorization_code_flow;
        if code_flow && path == CALLBACK_PATH && req.method() == Method::GET {
            let (parts, _) = req.into_parts();
            return self.login_callback(oidc, &parts).await;
        }
        if oidc.config.back_channel_logout
            && req.method() == Method::POST
            && path == oidc.config.back_channel_logout_path.trim_matches('/')
        {
            return self.back_channel_logout(oidc, req).await;
        }
        match self.oidc_caller(oidc, req.headers()).await {
            Ok(Some(OidcCaller::Bearer(identity))) => {
                return self.handle_as(identity, Principal::Bearer, req).await
            }
            Ok(Some(OidcCaller::Session(session))) => match self.session_identity(&session).await {
                Ok(identity) => {
                    return self
                        .handle_as(identity, Principal::Session(&session.id), req)
                        .await
                }
                Err(e) => return refused(req.headers(), &e),
            },
            Ok(None) => {}
            Err(e) => return refused(req.headers(), &e),
        }
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let is_page =
            ui::wants_html(None, accept) && matches!(*req.method(), Method::GET | Method::HEAD);
        if code_flow && is_page {
            let return_to = match req.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            return match self.start_login(oidc, return_to).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot start an OpenID Connect login");
                    self.error_page(&e)
                }
            };
        }
        refused(req.headers(), &refusal)
    }

    /// The caller a bearer token or session cookie names; `None` when there is neither.
    async fn oidc_caller(
        &self,
        oidc: &Oidc,
        headers: &http::HeaderMap,
    ) -> Result<Option<OidcCaller>> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if let (Some(token), true) = (bearer, oidc.config.bearer_token) {
            let metadata = oidc.provider.metadata().await?;
            let claims = token::verify(
                &oidc.provider,
                token,
                &Expect {
                    issuer: &metadata.issuer,
                    audience: oidc.config.audience(),
                    expires: true,
                },
            )
            .await?;
            let user = TokenUser::from_claims(&[&claims])
                .ok_or_else(|| Error::Unauthenticated("bearer token names no subject".into()))?;
            let identity = self.token_identity(&user).await?;
            return Ok(Some(OidcCaller::Bearer(Arc::new(identity))));
        }
        if !oidc.config.authorization_code_flow {
            return Ok(None);
        }
        Ok(session::cookie(headers, SESSION_COOKIE)
            .and_then(|id| oidc.sessions.get(id))
            .map(OidcCaller::Session))
    }

    /// The local user `user` is, by the role configuration's `email`, `token-role` and
    /// `token-group` rules; refused when no rule gives them a role.
    async fn token_identity(&self, user: &TokenUser) -> Result<Identity> {
        let mut local = identity::token_user(&self.config.users, &user.email, &user.roles, &user.groups)
            .ok_or_else(|| {
                tracing::warn!(user = %user.email, "OpenID Connect user not configured as a local user");
                Error::Unauthenticated(format!(
                    "user {} is not configured as a local user",
                    user.email
                ))
            })?;
        // Pages and logs name the person, not the rule that admitted them.
        local.name = user.name.clone();
        identity::practitioner_identity(&self.store, &self.config.organization_identifier, &local)
            .await?
            .ok_or_else(|| {
                Error::Unauthenticated("the local organization is not in the allow list".into())
            })
    }

    /// The session's identity, resolved again when the allow list changed.
    async fn session_identity(&self, session: &Session) -> Result<Arc<Identity>> {
        let generation = self.store.allow_list_generation();
        if let Some(identity) = session.identity_at(generation) {
            return Ok(identity);
        }
        let identity = Arc::new(self.token_identity(&session.user).await?);
        session.remember_identity(generation, identity.clone());
        Ok(identity)
    }

    fn redirect_uri(&self) -> String {
        format!("{}/{CALLBACK_PATH}", self.config.base_url)
    }

    /// Sends the browser to the provider's login, remembering where it wanted to go.
    async fn start_login(&self, oidc: &Oidc, return_to: String) -> Result<Response<ResponseBody>> {
        let metadata = oidc.provider.metadata().await?;
        let state = session::random_token()?;
        let nonce = session::random_token()?;
        let verifier = session::random_token()?;
        let challenge = session::pkce_challenge(&verifier);
        oidc.logins.insert(
            state.clone(),
            PendingLogin::new(verifier, nonce.clone(), return_to),
        );
        let redirect_uri = self.redirect_uri();
        let query = form_encode(&[
            ("response_type", "code"),
            ("client_id", &oidc.config.client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", "openid profile email"),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let separator = if metadata.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut response = redirect(&format!(
            "{}{separator}{query}",
            metadata.authorization_endpoint
        ));
        *response.status_mut() = StatusCode::FOUND;
        add_cookie(
            &mut response,
            session::set_cookie(LOGIN_COOKIE, Some(&state), Some(LOGIN_COOKIE_AGE)),
        );
        Ok(response)
    }

    /// The provider's answer to a login: the code exchanged, the ID token checked, a session
    /// begun for a configured user.
    async fn login_callback(
        &self,
        oidc: &Oidc,
        req: &http::request::Parts,
    ) -> Response<ResponseBody> {
        match self.finish_login(oidc, req).await {
            Ok((session, return_to)) => {
                let mut response = redirect(&format!("{}/{return_to}", self.config.base_url));
                add_cookie(
                    &mut response,
                    session::set_cookie(SESSION_COOKIE, Some(&session.id), None),
                );
                add_cookie(&mut response, session::set_cookie(LOGIN_COOKIE, None, None));
                tracing::info!(user = %session.user.email, "logged in with OpenID Connect");
                response
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "OpenID Connect login failed");
                self.error_page(&e)
            }
        }
    }

    async fn finish_login(
        &self,
        oidc: &Oidc,
        req: &http::request::Parts,
    ) -> Result<(Arc<Session>, String)> {
        let query = parse_query_string(req.uri.query().unwrap_or(""));
        let param = |name: &str| {
            query
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if let Some(error) = param("error") {
            return Err(Error::Unauthenticated(format!(
                "the OpenID provider refused the login: {error} {}",
                param("error_description").unwrap_or("")
            )));
        }
        let (Some(code), Some(state)) = (param("code"), param("state")) else {
            return Err(Error::Invalid("login answer without code or state".into()));
        };
        // The state must be the one this browser was given, so that nobody can log a
        // victim's browser in with the attacker's own login.
        if session::cookie(&req.headers, LOGIN_COOKIE) != Some(state) {
            return Err(Error::Unauthenticated(
                "this login was not started in this browser".into(),
            ));
        }
        let login = oidc
            .logins
            .take(state)
            .ok_or_else(|| Error::Unauthenticated("login expired or already used".into()))?;
        let tokens = oidc
            .provider
            .exchange_code(code, &login.verifier, &self.redirect_uri())
            .await?;
        let metadata = oidc.provider.metadata().await?;
        let id_claims = token::verify(
            &oidc.provider,
            &tokens.id_token,
            &Expect {
                issuer: &metadata.issuer,
                audience: Some(&oidc.config.client_id),
                expires: true,
            },
        )
        .await?;
        if id_claims.get("nonce").and_then(Value::as_str) != Some(login.nonce.as_str()) {
            return Err(Error::Unauthenticated(
                "ID token nonce does not match".into(),
            ));
        }
        // A JWT access token (Keycloak's) carries roles too; an opaque one is no JWT.
        let access_claims = match &tokens.access_token {
            Some(access) if access.matches('.').count() == 2 => token::verify(
                &oidc.provider,
                access,
                &Expect {
                    issuer: &metadata.issuer,
                    audience: None,
                    expires: true,
                },
            )
            .await
            .ok(),
            _ => None,
        };
        let mut claims = vec![&id_claims];
        claims.extend(access_claims.as_ref());
        let user = TokenUser::from_claims(&claims)
            .ok_or_else(|| Error::Unauthenticated("ID token names no subject".into()))?;
        let identity = Arc::new(self.token_identity(&user).await?);
        let session = oidc.sessions.insert(Session::new(
            session::random_token()?,
            user,
            tokens.id_token,
        ));
        session.remember_identity(self.store.allow_list_generation(), identity);
        Ok((session, login.return_to))
    }

    /// The provider ends a session: a logout token, checked as the back-channel logout
    /// specification says, ends this server's sessions of its `sid` (or `sub`).
    async fn back_channel_logout<B>(&self, oidc: &Oidc, req: Request<B>) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let answer = |status: StatusCode, body: &'static str| {
            let mut response =
                Response::new(ResponseBody::whole(Bytes::from_static(body.as_bytes())));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            response
        };
        match self.end_sessions(oidc, req).await {
            Ok(ended) => {
                tracing::info!(sessions = ended, "back-channel logout");
                answer(StatusCode::OK, "{}")
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "back-channel logout refused");
                answer(StatusCode::BAD_REQUEST, "{\"error\":\"invalid_request\"}")
            }
        }
    }

    async fn end_sessions<B>(&self, oidc: &Oidc, req: Request<B>) -> Result<usize>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let body = read_body(req.into_body(), MAX_LOGOUT_BODY).await?;
        let form = parse_query_string(std::str::from_utf8(&body).unwrap_or(""));
        let token = form
            .iter()
            .find(|(n, _)| n == "logout_token")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Error::Invalid("no logout_token".into()))?;
        let metadata = oidc.provider.metadata().await?;
        let claims = token::verify(
            &oidc.provider,
            token,
            &Expect {
                issuer: &metadata.issuer,
                audience: Some(&oidc.config.client_id),
                expires: false,
            },
        )
        .await?;
        let is_logout = claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|events| events.contains_key(LOGOUT_EVENT));
        if !is_logout || claims.get("nonce").is_some() || claims.get("iat").is_none() {
            return Err(Error::Invalid("not a logout token".into()));
        }
        let sid = claims.get("sid").and_then(Value::as_str);
        let sub = claims.get("sub").and_then(Value::as_str);
        if sid.is_none() && sub.is_none() {
            return Err(Error::Invalid(
                "logout token names neither sid nor sub".into(),
            ));
        }
        Ok(oidc.sessions.remove_matching(sid, sub))
    }

    /// Ends the session `session_id` and sends the browser to the provider's logout.
    pub(crate) async fn logout(&self, session_id: &str) -> Response<ResponseBody> {
        let home = format!("{}/", self.config.base_url);
        let ended = self
            .oidc
            .as_ref()
            .and_then(|oidc| Some((oidc, oidc.sessions.remove(session_id)?)));
        let target = match ended {
            Some((oidc, session)) => match oidc.provider.metadata().await {
                Ok(metadata) => match &metadata.end_session_endpoint {
                    Some(end) => format!(
                        "{end}{}{}",
                        if end.contains('?') { '&' } else { '?' },
                        form_encode(&[
                            ("id_token_hint", &session.id_token),
                            ("client_id", &oidc.config.client_id),
                        ])
                    ),
                    None => home,
                },
                Err(_) => home,
            },
            None => home,
        };
        let mut response = redirect(&target);
        add_cookie(
            &mut response,
            session::set_cookie(SESSION_COOKIE, None, None),
        );
        response
    }

    /// An error as a page, for requests that have no identity to render it for.
    fn error_page(&self, error: &Error) -> Response<ResponseBody> {
        self.pages.render(
            Reply::error(error),
            &ui::PageRequest::anonymous(&self.config, ""),
        )
    }
}

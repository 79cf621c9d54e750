//! OpenID Connect for local users, as the Java DSF offers it (`DEV_DSF_SERVER_AUTH_OIDC_*`):
//! people log in to the browser pages with the authorization code flow and PKCE, API clients
//! send the provider's access tokens as `Authorization: Bearer`, and the provider ends
//! sessions with back-channel logout. A user is whom the role configuration's `email`,
//! `token-role` and `token-group` rules make them; a user no rule names is refused.
//!
//! Certificates still come first: a request with a client certificate is its holder's, and
//! only requests without one look for a token or a session.

mod flow;
mod provider;
mod session;
mod token;

use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// OpenID Connect settings (the Java DSF's `DEV_DSF_SERVER_AUTH_OIDC_*`).
#[derive(Clone)]
#[non_exhaustive]
pub struct OidcConfig {
    /// The authorization code flow for the browser pages
    /// (`…_AUTHORIZATION_CODE_FLOW`).
    pub authorization_code_flow: bool,
    /// Bearer tokens for API calls (`…_BEARER_TOKEN`).
    pub bearer_token: bool,
    /// The audience bearer tokens must name (`…_BEARER_TOKEN_AUDIENCE`); the client id when
    /// `None`, no check when empty.
    pub bearer_token_audience: Option<String>,
    /// The provider's realm base URL, its issuer
    /// (`…_PROVIDER_REALM_BASE_URL`, e.g. `https://keycloak:8443/realms/dsf`).
    pub provider_realm_base_url: String,
    /// Below the realm base URL (`…_PROVIDER_DISCOVERY_PATH`).
    pub discovery_path: String,
    /// How this server connects to the provider: the CAs it trusts for it
    /// (`…_PROVIDER_CLIENT_TRUST_SERVER_CERTIFICATE_CAS`).
    pub provider_tls: Arc<rustls::ClientConfig>,
    /// Limit of one request to the provider.
    pub provider_timeout: Duration,
    /// How long the discovery document and the keys are kept.
    pub cache_timeout: Duration,
    /// `…_CLIENT_ID`.
    pub client_id: String,
    /// `…_CLIENT_SECRET`.
    pub client_secret: String,
    /// Back-channel logout (`…_BACK_CHANNEL_LOGOUT`).
    pub back_channel_logout: bool,
    /// Where the provider posts logout tokens, below the base URL
    /// (`…_BACK_CHANNEL_LOGOUT_PATH`).
    pub back_channel_logout_path: String,
    /// Inactivity after which a session ends (`…_SESSION_TIMEOUT`).
    pub session_timeout: Duration,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("authorization_code_flow", &self.authorization_code_flow)
            .field("bearer_token", &self.bearer_token)
            .field("provider_realm_base_url", &self.provider_realm_base_url)
            .field("client_id", &self.client_id)
            .field("back_channel_logout", &self.back_channel_logout)
            .finish_non_exhaustive()
    }
}

impl OidcConfig {
    /// Settings for the provider at `provider_realm_base_url` (HTTPS) and this server's
    /// client there, with no flow enabled yet and the Java DSF's defaults otherwise.
    pub fn new(
        provider_realm_base_url: &str,
        client_id: &str,
        client_secret: &str,
        provider_tls: Arc<rustls::ClientConfig>,
    ) -> Result<OidcConfig> {
        let base = provider_realm_base_url.trim_end_matches('/');
        if !base.starts_with("https://") {
            return Err(Error::Invalid(format!(
                "OpenID provider realm base URL {base} is not https"
            )));
        }
        Ok(OidcConfig {
            authorization_code_flow: false,
            bearer_token: false,
            bearer_token_audience: None,
            provider_realm_base_url: base.to_owned(),
            discovery_path: "/.well-known/openid-configuration".into(),
            provider_tls,
            provider_timeout: Duration::from_secs(30),
            cache_timeout: Duration::from_secs(3600),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            back_channel_logout: false,
            back_channel_logout_path: "/back-channel-logout".into(),
            session_timeout: Duration::from_secs(30 * 60),
        })
    }

    /// Whether a setting needed by an enabled flow is missing: the code flow needs the client
    /// id and secret, back-channel logout the code flow.
    pub fn check(&self) -> Result<()> {
        if self.authorization_code_flow
            && (self.client_id.is_empty() || self.client_secret.is_empty())
        {
            return Err(Error::Invalid(
                "the OpenID Connect authorization code flow needs a client id and secret".into(),
            ));
        }
        if self.back_channel_logout && !self.authorization_code_flow {
            return Err(Error::Invalid(
                "OpenID Connect back-channel logout needs the authorization code flow".into(),
            ));
        }
        if !self.back_channel_logout_path.starts_with('/') {
            return Err(Error::Invalid(
                "the back-channel logout path must start with '/'".into(),
            ));
        }
        Ok(())
    }

    fn audience(&self) -> Option<&str> {
        match self.bearer_token_audience.as_deref() {
            None => Some(self.client_id.as_str()).filter(|c| !c.is_empty()),
            Some(audience) => Some(audience.trim()).filter(|a| !a.is_empty()),
        }
    }
}

/// OpenID Connect at run time: the provider, the sessions and the logins under way.
pub(crate) struct Oidc {
    config: OidcConfig,
    provider: provider::Provider,
    sessions: session::Sessions,
    logins: session::PendingLogins,
}

impl Oidc {
    pub(crate) fn new(config: &OidcConfig) -> Result<Oidc> {
        config.check()?;
        Ok(Oidc {
            provider: provider::Provider::new(config)?,
            sessions: session::Sessions::new(config.session_timeout),
            logins: session::PendingLogins::default(),
            config: config.clone(),
        })
    }
}

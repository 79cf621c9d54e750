//! The OpenID provider as this server talks to it: its discovery document and signing keys
//! (each fetched when first needed and kept for a while), and the token endpoint the
//! authorization code is exchanged at.

use super::OidcConfig;
use crate::client::{ClientSettings, FhirClient};
use crate::{Error, Result};
use bytes::Bytes;
use http::Method;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the discovery document says, of what this server uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// The token endpoint's answer to a code exchange.
#[derive(Debug, Deserialize)]
pub(crate) struct Tokens {
    pub id_token: String,
    #[serde(default)]
    pub access_token: Option<String>,
}

struct Cached<T> {
    value: T,
    fetched: Instant,
}

/// A connection to the provider with its cached documents.
pub(crate) struct Provider {
    client: FhirClient,
    config: OidcConfig,
    metadata: tokio::sync::Mutex<Option<Cached<Arc<Metadata>>>>,
    keys: tokio::sync::Mutex<Option<Cached<Arc<JwkSet>>>>,
}

/// Refetching the keys for an unknown key id happens at most this often, so that tokens with
/// made-up key ids cannot make this server hammer the provider.
const MIN_KEY_REFRESH: Duration = Duration::from_secs(10);

impl Provider {
    pub(crate) fn new(config: &OidcConfig) -> Result<Provider> {
        let settings = ClientSettings {
            timeout: config.provider_timeout,
            retries: 1,
            ..ClientSettings::default()
        };
        let client = FhirClient::with_settings(
            &config.provider_realm_base_url,
            config.provider_tls.clone(),
            settings,
        )?;
        Ok(Provider {
            client,
            config: config.clone(),
            metadata: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(None),
        })
    }

    /// The path of `url` on the provider; endpoints elsewhere are refused, since this server
    /// trusts only the provider's own certificate.
    fn path_of<'a>(&self, url: &'a str) -> Result<&'a str> {
        let path = self.client.relative(url);
        if path == url && url.contains("://") {
            return Err(Error::transport_fault(format!(
                "OpenID provider endpoint {url} is not below {}",
                self.client.base_url()
            )));
        }
        Ok(path)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .client
            .request(Method::GET, path, &[("accept", "application/json")], None)
            .await?
            .error_for_status()?;
        serde_json::from_slice(&response.body).map_err(|e| {
            Error::transport_in(format!("OpenID provider answered {path} with bad JSON"), e)
        })
    }

    /// The discovery document, fetched at most once per cache period.
    pub(crate) async fn metadata(&self) -> Result<Arc<Metadata>> {
        let mut cached = self.metadata.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.fetched.elapsed() < self.config.cache_timeout)
        {
            return Ok(c.value.clone());
        }
        let metadata: Metadata = self.get_json(&self.config.discovery_path).await?;
        let metadata = Arc::new(metadata);
        *cached = Some(Cached {
            value: metadata.clone(),
            fetched: Instant::now(),
        });
        Ok(metadata)
    }

    /// The provider's signing keys; fetched again when `refresh` asks (a token names a key
    /// not known yet) and the last fetch is not too recent.
    pub(crate) async fn keys(&self, refresh: bool) -> Result<Arc<JwkSet>> {
        let mut cached = self.keys.lock().await;
        if let Some(c) = cached.as_ref() {
            let age = c.fetched.elapsed();
            let fresh = age < self.config.cache_timeout && !(refresh && age >= MIN_KEY_REFRESH);
            if fresh {
                return Ok(c.value.clone());
            }
        }
        let metadata = self.metadata().await?;
        let path = self.path_of(&metadata.jwks_uri)?.to_owned();
        let keys: JwkSet = self.get_json(&path).await?;
        let keys = Arc::new(keys);
        *cached = Some(Cached {
            value: keys.clone(),
            fetched: Instant::now(),
        });
        Ok(keys)
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens, authenticating as
    /// the client with HTTP Basic (`client_secret_basic`).
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens> {
        let metadata = self.metadata().await?;
        let path = self.path_of(&metadata.token_endpoint)?.to_owned();
        let form = form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", &self.config.client_id),
        ]);
        let credentials = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!(
                "{}:{}",
                form_component(&self.config.client_id),
                form_component(&self.config.client_secret)
            ),
        );
        let authorization = format!("Basic {credentials}");
        let response = self
            .client
            .request(
                Method::POST,
                &path,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "application/json"),
                    ("authorization", &authorization),
                ],
                Some(Bytes::from(form)),
            )
            .await?;
        if !response.status.is_success() {
            return Err(Error::Unauthenticated(format!(
                "the OpenID provider refused the authorization code ({}): {}",
                response.status,
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| Error::transport_in("OpenID provider token answer is not JSON", e))
    }
}

/// One `application/x-www-form-urlencoded` component.
pub(crate) fn form_component(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, FORM).to_string()
}

/// `name=value&…`, each part encoded.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", form_component(name), form_component(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Everything but unreserved characters is encoded.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

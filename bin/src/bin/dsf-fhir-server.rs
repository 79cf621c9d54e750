//! One organisation's DSF FHIR server. Configured by environment variables with the Java
//! DSF's names (or the equivalent flags).

use clap::Parser;
use dsf_bin::{
    fill_init_bundle, init_logging, iso_duration, shutdown_signal, start_fhir_server,
    FhirServerSettings,
};
use dsf_core::{load_certs, ClientCertificates, Thumbprint, TlsFiles};
use dsf_fhir::server::{
    caller::parse_address_ranges, AuditLog, AuditTarget, ForwardedCertificates, OidcConfig,
    RoleConfig, UiTheme,
};
use dsf_fhir::ServerConfig;
use http::HeaderName;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "DSF FHIR server (dsf-rs)")]
struct Args {
    /// External base URL, e.g. https://dsf.example.org/fhir
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_BASE_URL")]
    base_url: String,
    /// Identifier value of the local organisation (http://dsf.dev/sid/organization-identifier)
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_ORGANIZATION_IDENTIFIER_VALUE")]
    organization_identifier: String,
    /// SHA-512 thumbprint of the local organisation's client certificate; derived from
    /// --client-certificate when absent
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_ORGANIZATION_THUMBPRINT")]
    organization_thumbprint: Option<String>,
    /// The local organisation's client certificate (PEM), used by its BPE
    #[arg(long, env = "DEV_DSF_FHIR_CLIENT_CERTIFICATE")]
    client_certificate: Option<PathBuf>,
    /// sqlite:<path>, sqlite::memory: or postgresql://user@host:port/db
    #[arg(
        long,
        env = "DEV_DSF_FHIR_DB_URL",
        default_value = "sqlite:fhir.sqlite"
    )]
    db_url: String,
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_PAGE_COUNT", default_value_t = 20)]
    page_count: usize,
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest Binary a raw POST may upload (stored a part at a time, never held whole)
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_MAX_BINARY_BYTES", default_value_t = 8 * 1024 * 1024 * 1024)]
    max_binary_bytes: u64,
    /// Local users, as the Java DSF's YAML role configuration (a list of rules with
    /// thumbprint, dsf-role and practitioner-role)
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_ROLECONFIG", default_value = "")]
    role_config: String,
    /// A transaction Bundle (JSON or XML) run at start as the local organisation, its ${…}
    /// placeholders filled
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_INIT_BUNDLE")]
    init_bundle: Option<PathBuf>,
    /// Which system the browser pages say this is: dev, test or prod
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_UI_THEME")]
    ui_theme: Option<String>,
    #[arg(long, env = "DEV_DSF_SERVER_API_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "DEV_DSF_SERVER_API_PORT", default_value_t = 8443)]
    port: u16,
    /// Server certificate chain (PEM); without it the server speaks plain HTTP for a
    /// TLS-terminating reverse proxy (then DEV_DSF_SERVER_AUTH_TRUSTED_PROXIES is required)
    #[arg(long, env = "DEV_DSF_SERVER_CERTIFICATE", requires_all = ["server_certificate_key", "trust_client_certificate_cas"])]
    server_certificate: Option<PathBuf>,
    /// Server private key (PEM)
    #[arg(long, env = "DEV_DSF_SERVER_CERTIFICATE_KEY")]
    server_certificate_key: Option<PathBuf>,
    /// CA certificates client certificates must chain to (PEM)
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_TRUST_CLIENT_CERTIFICATE_CAS")]
    trust_client_certificate_cas: Option<PathBuf>,
    /// Header a reverse proxy forwards the client certificate in (PEM, URL-encoded PEM or
    /// base64 DER)
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_CLIENT_CERTIFICATE_HEADER",
        default_value = "X-ClientCert"
    )]
    client_certificate_header: String,
    /// Comma-separated addresses or CIDR ranges of reverse proxies whose forwarded client
    /// certificates are believed; from any other address the header is ignored
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: String,
    #[command(flatten)]
    oidc: OidcArgs,
    #[command(flatten)]
    status: dsf_bin::StatusArgs,
    #[command(flatten)]
    audit: AuditArgs,
}

/// The audit log (the Java DSF's `DEV_DSF_LOG_AUDIT_*` switches; always JSON lines).
#[derive(clap::Args)]
struct AuditArgs {
    /// Write the audit log to a file
    #[arg(long, env = "DEV_DSF_LOG_AUDIT_FILE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    audit_file_enabled: bool,
    /// The audit log file (reopened when moved away, for logrotate)
    #[arg(
        long,
        env = "DEV_DSF_LOG_AUDIT_FILE",
        default_value = "log/fhir-audit.log"
    )]
    audit_file: PathBuf,
    /// Write the audit log to standard output
    #[arg(long, env = "DEV_DSF_LOG_AUDIT_CONSOLE_OUT_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    audit_console_out_enabled: bool,
    /// Write the audit log to standard error
    #[arg(long, env = "DEV_DSF_LOG_AUDIT_CONSOLE_ERR_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    audit_console_err_enabled: bool,
}

impl AuditArgs {
    fn log(&self) -> Result<Option<AuditLog>, String> {
        let mut targets = Vec::new();
        if self.audit_file_enabled {
            targets.push(AuditTarget::File(self.audit_file.clone()));
        }
        if self.audit_console_out_enabled {
            targets.push(AuditTarget::Stdout);
        }
        if self.audit_console_err_enabled {
            targets.push(AuditTarget::Stderr);
        }
        if targets.is_empty() {
            return Ok(None);
        }
        AuditLog::open(targets)
            .map(Some)
            .map_err(|e| format!("audit log: {e}"))
    }
}

/// OpenID Connect for local users (the Java DSF's `DEV_DSF_SERVER_AUTH_OIDC_*`).
#[derive(clap::Args)]
struct OidcArgs {
    /// The authorization code flow (with PKCE) for the browser pages
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_AUTHORIZATION_CODE_FLOW",
        default_value_t = false
    )]
    oidc_authorization_code_flow: bool,
    /// Bearer tokens (the provider's JWT access tokens) for API calls
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_BEARER_TOKEN",
        default_value_t = false
    )]
    oidc_bearer_token: bool,
    /// Audience bearer tokens must name; the client id when unset, no check when empty
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_OIDC_BEARER_TOKEN_AUDIENCE")]
    oidc_bearer_token_audience: Option<String>,
    /// The provider's realm base URL (its issuer), e.g. https://keycloak:8443/realms/dsf
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_REALM_BASE_URL")]
    oidc_provider_realm_base_url: Option<String>,
    /// Path of the discovery document below the realm base URL
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_DISCOVERY_PATH",
        default_value = "/.well-known/openid-configuration"
    )]
    oidc_provider_discovery_path: String,
    /// CA certificates (PEM) the provider's server certificate must chain to
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_TRUST_SERVER_CERTIFICATE_CAS"
    )]
    oidc_provider_trust_cas: Option<PathBuf>,
    /// Limit of one request to the provider
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_TIMEOUT_READ",
        default_value = "PT30S"
    )]
    oidc_provider_timeout: String,
    /// How long the discovery document and signing keys are kept
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_CACHE_TIMEOUT_JWKS_RESOURCE",
        default_value = "PT1H"
    )]
    oidc_cache_timeout: String,
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_OIDC_CLIENT_ID", default_value = "")]
    oidc_client_id: String,
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_CLIENT_SECRET",
        default_value = ""
    )]
    oidc_client_secret: String,
    /// A file holding the client secret
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_OIDC_CLIENT_SECRET_FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// Back-channel logout (needs the authorization code flow)
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_BACK_CHANNEL_LOGOUT",
        default_value_t = false
    )]
    oidc_back_channel_logout: bool,
    /// Where the provider posts logout tokens, below the base URL
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_BACK_CHANNEL_LOGOUT_PATH",
        default_value = "/back-channel-logout"
    )]
    oidc_back_channel_logout_path: String,
    /// Inactivity after which a login session ends
    #[arg(
        long,
        env = "DEV_DSF_SERVER_AUTH_OIDC_SESSION_TIMEOUT",
        default_value = "PT30M"
    )]
    oidc_session_timeout: String,
}

impl OidcArgs {
    /// The settings, when a flow is enabled.
    fn config(&self) -> Result<Option<OidcConfig>, String> {
        if !self.oidc_authorization_code_flow && !self.oidc_bearer_token {
            return Ok(None);
        }
        let base = self.oidc_provider_realm_base_url.as_deref().ok_or(
            "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_REALM_BASE_URL is required for OpenID Connect",
        )?;
        let trust = self.oidc_provider_trust_cas.as_ref().ok_or(
            "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_TRUST_SERVER_CERTIFICATE_CAS is required for OpenID Connect",
        )?;
        let cas = load_certs(trust)
            .map_err(|e| format!("OpenID provider CAs: {}", dsf_core::ErrorChain(&e)))?;
        let tls = dsf_core::anonymous_client_config(cas).map_err(|e| e.to_string())?;
        let secret = match &self.oidc_client_secret_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    format!(
                        "DEV_DSF_SERVER_AUTH_OIDC_CLIENT_SECRET_FILE {}: {e}",
                        path.display()
                    )
                })?
                .trim()
                .to_owned(),
            None => self.oidc_client_secret.clone(),
        };
        let mut config = OidcConfig::new(base, &self.oidc_client_id, &secret, Arc::new(tls))
            .map_err(|e| e.to_string())?;
        config.authorization_code_flow = self.oidc_authorization_code_flow;
        config.bearer_token = self.oidc_bearer_token;
        config.bearer_token_audience = self.oidc_bearer_token_audience.clone();
        config.discovery_path = self.oidc_provider_discovery_path.clone();
        config.provider_timeout = iso_duration(
            &self.oidc_provider_timeout,
            "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_TIMEOUT_READ",
        )?;
        config.cache_timeout = iso_duration(
            &self.oidc_cache_timeout,
            "DEV_DSF_SERVER_AUTH_OIDC_PROVIDER_CLIENT_CACHE_TIMEOUT_JWKS_RESOURCE",
        )?;
        config.back_channel_logout = self.oidc_back_channel_logout;
        config.back_channel_logout_path = self.oidc_back_channel_logout_path.clone();
        config.session_timeout = iso_duration(
            &self.oidc_session_timeout,
            "DEV_DSF_SERVER_AUTH_OIDC_SESSION_TIMEOUT",
        )?;
        config.check().map_err(|e| e.to_string())?;
        Ok(Some(config))
    }
}

fn forwarded_certificates(args: &Args) -> Result<Option<ForwardedCertificates>, String> {
    let proxies = parse_address_ranges(&args.trusted_proxies).map_err(|e| e.to_string())?;
    if proxies.is_empty() {
        return Ok(None);
    }
    let header = HeaderName::try_from(args.client_certificate_header.trim()).map_err(|_| {
        format!(
            "'{}' is not a valid HTTP header name",
            args.client_certificate_header
        )
    })?;
    Ok(Some(
        ForwardedCertificates::from_proxies(proxies).with_header(header),
    ))
}

fn local_thumbprints(args: &Args) -> Result<Vec<Thumbprint>, String> {
    if let Some(text) = &args.organization_thumbprint {
        return Thumbprint::parse(text)
            .map(|t| vec![t])
            .ok_or_else(|| format!("organization thumbprint '{text}' is not 128 hex digits"));
    }
    let path = args.client_certificate.as_ref().ok_or(
        "set DEV_DSF_FHIR_SERVER_ORGANIZATION_THUMBPRINT or DEV_DSF_FHIR_CLIENT_CERTIFICATE",
    )?;
    let certs = load_certs(path).map_err(|e| dsf_core::ErrorChain(&e).to_string())?;
    Ok(certs
        .first()
        .map(|c| Thumbprint::of_der(c))
        .into_iter()
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), dsf_bin::Failure> {
    if let Some(code) = dsf_bin::status::health_check_if_asked() {
        std::process::exit(code);
    }
    init_logging();
    let args = Args::parse();
    let mut config = ServerConfig::new(&args.base_url, &args.organization_identifier);
    config.page_count = args.page_count;
    config.max_body_bytes = args.max_body_bytes;
    config.max_binary_bytes = args.max_binary_bytes;
    config.forwarded_certificates = forwarded_certificates(&args)?;
    config.audit = args.audit.log()?;
    config.ui_theme = match args.ui_theme.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(theme) => Some(UiTheme::parse(theme).ok_or_else(|| {
            format!("DEV_DSF_FHIR_SERVER_UI_THEME: '{theme}' is not dev, test or prod")
        })?),
        None => None,
    };
    let roles = RoleConfig::parse(&args.role_config)
        .map_err(|e| format!("DEV_DSF_FHIR_SERVER_ROLECONFIG: {e}"))?;
    config.oidc = args.oidc.config()?;
    if roles.has_token_only_rules() && config.oidc.is_none() {
        tracing::warn!("role configuration rules matching only by token-role or token-group recognise nobody: OpenID Connect is off");
    }
    config.users.extend(roles.users());
    let local_thumbprints = local_thumbprints(&args)?;
    let init_bundle = match &args.init_bundle {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("init bundle {}: {e}", path.display()))?;
            Some(
                fill_init_bundle(&text, &config, &local_thumbprints)
                    .map_err(|e| format!("init bundle {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let tls = match (
        &args.server_certificate,
        &args.server_certificate_key,
        &args.trust_client_certificate_cas,
    ) {
        (Some(certificate), Some(private_key), Some(trusted_cas)) => Some(
            TlsFiles {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                trusted_cas: trusted_cas.clone(),
            }
            // Browsers of users who log in with OpenID Connect have no certificate.
            .server_config_with(if config.oidc.is_some() {
                ClientCertificates::Optional
            } else {
                ClientCertificates::Required
            })?,
        ),
        _ if config.forwarded_certificates.is_some() => None,
        _ => return Err("set DEV_DSF_SERVER_CERTIFICATE, DEV_DSF_SERVER_CERTIFICATE_KEY and DEV_DSF_SERVER_AUTH_TRUST_CLIENT_CERTIFICATE_CAS, or DEV_DSF_SERVER_AUTH_TRUSTED_PROXIES to serve plain HTTP behind a reverse proxy".into()),
    };
    let settings = FhirServerSettings {
        local_thumbprints,
        organization_name: args.organization_identifier.clone(),
        bind: format!("{}:{}", args.host, args.port).parse()?,
        db_url: args.db_url.clone(),
        postgres_schema: None,
        config,
        tls,
        peers: Vec::new(),
        init_bundle,
        status: args.status.address()?,
    };
    start_fhir_server(settings, shutdown_signal())
        .await?
        .await??;
    Ok(())
}

use crate::{load_certs, load_private_key, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// The one crypto provider dsf-rs uses, so that no process depends on a process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM files of one TLS endpoint: its own certificate chain and key, and the CA certificates it
/// trusts for the other side.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The endpoint's certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The certificate's private key.
    pub private_key: PathBuf,
    /// The CA certificates the other side's certificate must chain to.
    pub trusted_cas: PathBuf,
}

impl TlsFiles {
    /// A mutual-TLS server configuration from these files ([`server_config`]).
    pub fn server_config(&self) -> Result<ServerConfig> {
        self.server_config_with(ClientCertificates::Required)
    }

    /// A server configuration from these files, with client certificates required or
    /// optional ([`server_config_with`]).
    pub fn server_config_with(
        &self,
        client_certificates: ClientCertificates,
    ) -> Result<ServerConfig> {
        server_config_with(
            load_certs(&self.certificate)?,
            load_private_key(&self.private_key)?,
            load_certs(&self.trusted_cas)?,
            client_certificates,
        )
    }

    /// A client configuration from these files ([`client_config`]).
    pub fn client_config(&self) -> Result<ClientConfig> {
        client_config(
            load_certs(&self.certificate)?,
            load_private_key(&self.private_key)?,
            load_certs(&self.trusted_cas)?,
        )
    }
}

fn root_store(cas: Vec<CertificateDer<'static>>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca)?;
    }
    Ok(roots)
}

/// Whether a TLS server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Every client presents one (mutual TLS, the DSF's default).
    Required,
    /// A client may connect without one, e.g. a browser whose user logs in with OpenID
    /// Connect; a certificate it does present must still chain to the trusted CAs.
    Optional,
}

/// A server configuration that demands a client certificate issued by one of `client_cas`.
/// Which certificate is *allowed* is decided later from its thumbprint, not here.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
) -> Result<ServerConfig> {
    server_config_with(chain, key, client_cas, ClientCertificates::Required)
}

/// A server configuration as [`server_config`], with client certificates required or
/// optional.
pub fn server_config_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
    client_certificates: ClientCertificates,
) -> Result<ServerConfig> {
    let provider = crypto_provider();
    let builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(client_cas)?),
        provider.clone(),
    );
    let verifier = match client_certificates {
        ClientCertificates::Required => builder.build()?,
        ClientCertificates::Optional => builder.allow_unauthenticated().build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that presents no certificate and trusts servers issued by
/// `server_cas` (e.g. for an OpenID provider).
pub fn anonymous_client_config(server_cas: Vec<CertificateDer<'static>>) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(server_cas)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that presents `chain` and trusts servers issued by `server_cas`.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_cas: Vec<CertificateDer<'static>>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(server_cas)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

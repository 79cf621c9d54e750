//! A throw-away PKI for development and tests: one CA that issues server and client
//! certificates. Never use these for production; real deployments use their CA's certificates.

use crate::{
    anonymous_client_config, client_config, parse_certs, parse_private_key, server_config,
    server_config_with, ClientCertificates, Result, Thumbprint,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A development certificate authority.
pub struct DevPki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
}

/// A certificate issued by [`DevPki`], with its key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// Its private key, PEM-encoded (PKCS#8).
    pub key_pem: String,
    der: Vec<u8>,
}

impl IssuedCert {
    /// The certificate, DER-encoded.
    pub fn cert_der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate's thumbprint: what an allow list names it by.
    pub fn thumbprint(&self) -> Thumbprint {
        Thumbprint::of_der(&self.der)
    }

    /// The certificate as a chain for rustls (the certificate alone; the CA is the dev CA).
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_certs(self.cert_pem.as_bytes(), "issued certificate")
    }

    /// The private key for rustls.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>> {
        parse_private_key(self.key_pem.as_bytes(), "issued key")
    }

    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert_pem)?;
        std::fs::write(dir.join(format!("{name}.key")), &self.key_pem)
    }
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
}

impl DevPki {
    /// A new CA with a fresh key, named `common_name`, valid from yesterday for a year.
    pub fn generate(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "dsf-rs development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let ca_key = KeyPair::generate()?;
        let ca_cert = params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        Ok(DevPki {
            ca_cert,
            ca_key,
            ca_pem,
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate for rustls trust stores.
    pub fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_certs(self.ca_pem.as_bytes(), "dev CA")
    }

    fn issue(&self, common_name: &str, usage: ExtendedKeyUsagePurpose) -> Result<IssuedCert> {
        self.issue_with(common_name, usage, None)
    }

    fn issue_with(
        &self,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        email: Option<&str>,
    ) -> Result<IssuedCert> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "dsf-rs development");
        dn.push(DnType::CountryName, "DE");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(common_name.try_into()?)];
        if let Some(email) = email {
            params
                .subject_alt_names
                .push(SanType::Rfc822Name(email.try_into()?));
        }
        if usage == ExtendedKeyUsagePurpose::ServerAuth {
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params
                .subject_alt_names
                .push(SanType::DnsName("localhost".try_into()?));
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A server certificate for `host`, also valid for `localhost` and 127.0.0.1.
    pub fn issue_server(&self, host: &str) -> Result<IssuedCert> {
        self.issue(host, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, as an organisation's BPE or a local user presents it.
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert> {
        self.issue(common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate naming `email` (a subject alternative name), as a person's
    /// certificate does; the role configuration may match it by that address.
    /// A client certificate of a person: `common_name` with `email` as its e-mail address,
    /// which the FHIR server's role configuration can match.
    pub fn issue_personal_client(&self, common_name: &str, email: &str) -> Result<IssuedCert> {
        self.issue_with(
            common_name,
            ExtendedKeyUsagePurpose::ClientAuth,
            Some(email),
        )
    }

    /// A mutual-TLS server configuration presenting `cert` and asking for client
    /// certificates of this CA.
    pub fn server_config(&self, cert: &IssuedCert) -> Result<rustls::ServerConfig> {
        server_config(cert.chain()?, cert.key()?, self.ca_certs()?)
    }

    /// A server configuration presenting `cert` that lets clients without a certificate
    /// connect too (browsers of users who log in with OpenID Connect).
    pub fn server_config_optional_client(&self, cert: &IssuedCert) -> Result<rustls::ServerConfig> {
        server_config_with(
            cert.chain()?,
            cert.key()?,
            self.ca_certs()?,
            ClientCertificates::Optional,
        )
    }

    /// A client configuration presenting no certificate and trusting servers of this CA.
    pub fn anonymous_client_config(&self) -> Result<rustls::ClientConfig> {
        anonymous_client_config(self.ca_certs()?)
    }

    /// A client configuration presenting `cert` and trusting servers of this CA.
    pub fn client_config(&self, cert: &IssuedCert) -> Result<rustls::ClientConfig> {
        client_config(cert.chain()?, cert.key()?, self.ca_certs()?)
    }

    /// Writes the CA certificate to `ca.crt` in `dir`.
    pub fn write_ca(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("ca.crt"), &self.ca_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_build_tls_configs_and_round_trip_through_files() {
        let pki = DevPki::generate("Test CA").unwrap();
        let server = pki.issue_server("fhir.org-a.test").unwrap();
        let client = pki.issue_client("org-a.test").unwrap();
        pki.server_config(&server).unwrap();
        pki.client_config(&client).unwrap();

        let dir = tempfile::tempdir().unwrap();
        client.write(dir.path(), "client").unwrap();
        pki.write_ca(dir.path()).unwrap();
        let loaded = crate::load_certs(&dir.path().join("client.crt")).unwrap();
        assert_eq!(Thumbprint::of_der(&loaded[0]), client.thumbprint());
        crate::load_private_key(&dir.path().join("client.key")).unwrap();
        assert_ne!(client.thumbprint(), server.thumbprint());
    }
}

//! Where the caller's client certificate comes from. Its thumbprint, and the e-mail addresses
//! it names, make the caller's identity (see [`super::identity`]); this module only finds the
//! certificate.
//!
//! Two sources, in this order:
//! - a certificate forwarded by a TLS-terminating reverse proxy in a request header
//!   (`X-ClientCert` by default, the Java DSF's `DEV_DSF_SERVER_AUTH_CLIENT_CERTIFICATE_HEADER`),
//!   believed only when the request's [`PeerAddress`] is one of the configured trusted proxies;
//!   from any other address the header is ignored, whatever it holds;
//! - the certificate the client presented in this server's own TLS handshake
//!   ([`PeerCertificate`]).
//!
//! Whoever accepts the connection puts both facts into each request's extensions: the
//! server's own accept loop does, and an embedder serving [`super::FhirService`] from its own
//! listener does the same (see `examples/rest_in_axum.rs`).

use crate::{Error, Result};
use base64::Engine as _;
use dsf_core::Thumbprint;
use http::HeaderName;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The certificate the client presented in the TLS handshake of the connection a request
/// came on, as far as it identifies the caller: its thumbprint, and the e-mail addresses it
/// names (which the role configuration may match). A request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCertificate {
    /// The certificate's thumbprint.
    pub thumbprint: Thumbprint,
    /// From the subject's `emailAddress` and the `rfc822Name` alternative names, lower-cased.
    pub emails: Vec<String>,
}

impl PeerCertificate {
    /// A certificate known by its thumbprint alone.
    pub fn new(thumbprint: Thumbprint) -> Self {
        PeerCertificate {
            thumbprint,
            emails: Vec::new(),
        }
    }

    /// A DER-encoded certificate (the first of `rustls::ServerConnection::peer_certificates`).
    pub fn from_der(der: &[u8]) -> Self {
        PeerCertificate {
            thumbprint: Thumbprint::of_der(der),
            emails: emails_of(der),
        }
    }
}

/// The e-mail addresses a certificate names; none if it cannot be read (the handshake
/// accepted it, so only this reading failed, and the thumbprint still identifies it).
fn emails_of(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut emails: Vec<String> = cert
        .subject()
        .iter_email()
        .filter_map(|attribute| attribute.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::RFC822Name(email) = name {
                emails.push((*email).to_owned());
            }
        }
    }
    let mut emails: Vec<String> = emails
        .into_iter()
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    emails.sort();
    emails.dedup();
    emails
}

/// The address the connection a request came on was accepted from. A request extension;
/// needed only when certificates forwarded by a proxy are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddress(pub SocketAddr);

/// Client certificates forwarded by TLS-terminating reverse proxies.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ForwardedCertificates {
    /// The header the proxy writes the client's certificate into: PEM (newlines may be
    /// spaces, as Apache's `%{SSL_CLIENT_CERT}s` sends it), URL-encoded PEM (nginx's
    /// `$ssl_client_escaped_cert`) or bare base64 DER.
    pub header: HeaderName,
    /// Addresses the header is believed from. Empty believes nobody.
    pub trusted_proxies: Vec<AddressRange>,
}

impl ForwardedCertificates {
    /// The Java DSF's default header name.
    pub const DEFAULT_HEADER: &'static str = "X-ClientCert";

    /// Believes `X-ClientCert` from the given proxies.
    pub fn from_proxies(trusted_proxies: Vec<AddressRange>) -> Self {
        ForwardedCertificates {
            header: HeaderName::from_static("x-clientcert"),
            trusted_proxies,
        }
    }

    /// The same with another header name.
    pub fn with_header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Whether requests from `address` are believed to come through a trusted proxy.
    pub(crate) fn trusts(&self, address: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(address))
    }
}

/// One address or a network in CIDR notation (`10.1.2.3`, `10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// The one address `address`.
    pub fn single(address: IpAddr) -> Self {
        AddressRange {
            network: address,
            prefix: if address.is_ipv4() { 32 } else { 128 },
        }
    }

    /// Whether `address` is in the range (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 client reaching a dual-stack listener appears as ::ffff:a.b.c.d.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_match(&net.octets(), &a.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_match(&net.octets(), &a.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if network[..full] != address[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (network[full] & mask) == (address[full] & mask)
}

impl FromStr for AddressRange {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            Error::Invalid(format!(
                "'{text}' is neither an IP address nor a CIDR range"
            ))
        };
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(AddressRange { network, prefix })
    }
}

/// Parses a comma-separated list of addresses and ranges (an environment variable's value).
pub fn parse_address_ranges(list: &str) -> Result<Vec<AddressRange>> {
    list.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// The client certificate behind a request: forwarded by a trusted proxy, else from this
/// connection's handshake, else none (401).
pub(crate) fn client_certificate(
    forwarded: Option<&ForwardedCertificates>,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<PeerCertificate> {
    if let Some(forwarded) = forwarded {
        let from_proxy = extensions
            .get::<PeerAddress>()
            .is_some_and(|PeerAddress(address)| forwarded.trusts(address.ip()));
        if from_proxy {
            if let Some(value) = headers.get(&forwarded.header) {
                let text = value.to_str().map_err(|_| unreadable())?;
                return forwarded_certificate(text);
            }
        }
    }
    extensions
        .get::<PeerCertificate>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("no client certificate".into()))
}

fn unreadable() -> Error {
    Error::Unauthenticated("the forwarded client certificate cannot be read".into())
}

/// Largest header value taken as a certificate; chains of real certificates stay far below.
const MAX_FORWARDED_CERTIFICATE: usize = 64 * 1024;

/// The first certificate in a header value.
fn forwarded_certificate(value: &str) -> Result<PeerCertificate> {
    if value.len() > MAX_FORWARDED_CERTIFICATE {
        return Err(unreadable());
    }
    let decoded;
    let value = if value.contains('%') {
        decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| unreadable())?;
        decoded.as_ref()
    } else {
        value
    };
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let body = match value.find(BEGIN) {
        Some(start) => {
            let rest = &value[start + BEGIN.len()..];
            &rest[..rest.find(END).ok_or_else(unreadable)?]
        }
        None => value,
    };
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64.as_bytes())
        .map_err(|_| unreadable())?;
    // A DER certificate is a SEQUENCE; anything else is not one, whatever its hash would be.
    if der.first() != Some(&0x30) {
        return Err(unreadable());
    }
    Ok(PeerCertificate::from_der(&der))
}

/// Who is behind a request besides its identity: what its forms' CSRF tokens are bound to,
/// and whether it can log out.
pub(crate) enum Principal<'a> {
    /// The holder of a client certificate.
    Certificate(&'a Thumbprint),
    /// A user logged in with OpenID Connect: the session's id.
    Session(&'a str),
    /// An API client with an OpenID Connect bearer token: it uses no forms.
    Bearer,
}

impl Principal<'_> {
    /// What CSRF tokens of this caller are derived from; none for bearer tokens.
    pub(crate) fn csrf_subject(&self) -> Option<String> {
        match self {
            Principal::Certificate(thumbprint) => {
                Some(format!("certificate:{}", thumbprint.as_str()))
            }
            Principal::Session(id) => Some(format!("session:{id}")),
            Principal::Bearer => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_email_addresses() {
        let pki = dsf_core::DevPki::generate("caller test CA").unwrap();
        let personal = pki
            .issue_personal_client("someone", " Someone@Example.ORG")
            .unwrap();
        let certificate = PeerCertificate::from_der(personal.cert_der());
        assert_eq!(certificate.thumbprint, personal.thumbprint());
        assert_eq!(certificate.emails, vec!["someone@example.org".to_owned()]);
        let plain = pki.issue_client("bpe").unwrap();
        assert!(PeerCertificate::from_der(plain.cert_der())
            .emails
            .is_empty());
        assert!(PeerCertificate::from_der(b"not a certificate")
            .emails
            .is_empty());
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let range: AddressRange = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(range.contains("::ffff:10.1.0.9".parse().unwrap()));
        let odd: AddressRange = "192.168.0.128/25".parse().unwrap();
        assert!(odd.contains("192.168.0.200".parse().unwrap()));
        assert!(!odd.contains("192.168.0.127".parse().unwrap()));
        let single: AddressRange = "::1".parse().unwrap();
        assert!(single.contains("::1".parse().unwrap()));
        assert!(!single.contains("127.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<AddressRange>().is_err());
        assert!("proxy.local".parse::<AddressRange>().is_err());
        assert_eq!(
            parse_address_ranges("127.0.0.1, 10.0.0.0/8,")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn forwarded_certificates_are_read_in_every_proxy_encoding() {
        let der = [0x30u8, 0x03, 0x02, 0x01, 0x05];
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let expected = Thumbprint::of_der(&der);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
        let apache = pem.replace('\n', " ");
        let nginx: String =
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        for value in [pem.as_str(), apache.as_str(), nginx.as_str(), b64.as_str()] {
            assert_eq!(
                forwarded_certificate(value).unwrap().thumbprint,
                expected,
                "{value}"
            );
        }
        for bad in [
            "",
            "not base64!",
            "-----BEGIN CERTIFICATE----- AAAA",
            "AAAA",
        ] {
            assert!(matches!(
                forwarded_certificate(bad),
                Err(Error::Unauthenticated(_))
            ));
        }
    }
}

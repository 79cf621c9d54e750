use crate::{Error, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// All certificates of a PEM document, in order (leaf first for a chain).
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM document.
pub fn parse_private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| Error::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| Error::NoPrivateKey(what.to_owned()))
}

/// The certificates in the PEM file at `path`, in file order (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read(path)?, &path.display().to_string())
}

/// The first private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_private_key(&read(path)?, &path.display().to_string())
}

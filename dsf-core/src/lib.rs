//! Shared foundations of dsf-rs: certificate thumbprints (the DSF's identity key), loading PEM
//! material, rustls configurations for mutual TLS, generation of development certificates, and
//! the `${…}` placeholders of configuration files ([`placeholders`]).
//!
//! Every other dsf-rs crate builds on this one; it knows nothing of FHIR or BPMN.
//!
//! ```
//! use dsf_core::{DevPki, Thumbprint};
//!
//! let pki = DevPki::generate("Example Dev CA").unwrap();
//! let org = pki.issue_client("org-a.dsf.test").unwrap();
//! let thumbprint = Thumbprint::of_der(org.cert_der());
//! assert_eq!(thumbprint.as_str().len(), 128);
//! ```

mod devcerts;
mod error;
mod pem;
pub mod placeholders;
mod thumbprint;
mod tls;

pub use devcerts::{DevPki, IssuedCert};
pub use error::{Error, ErrorChain, Result};
pub use pem::{load_certs, load_private_key, parse_certs, parse_private_key};
pub use placeholders::{environment_variable, fill_placeholders};
pub use thumbprint::Thumbprint;
pub use tls::{
    anonymous_client_config, client_config, crypto_provider, server_config, server_config_with,
    ClientCertificates, TlsFiles,
};

/// Re-exported so that users of the configurations need not depend on rustls themselves.
pub use rustls;

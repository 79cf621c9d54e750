use sha2::{Digest, Sha512};
use std::fmt;

/// The DSF identifies a peer by the lower-case hex SHA-512 digest of its DER-encoded certificate;
/// Organization resources carry it in the `extension-certificate-thumbprint` extension.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint(String);

impl Thumbprint {
    /// The thumbprint of the DER-encoded certificate `der`.
    pub fn of_der(der: &[u8]) -> Self {
        Thumbprint(hex::encode(Sha512::digest(der)))
    }

    /// Accepts the 128 hex digit form, in either case (operators paste them from tools that
    /// print upper case); stores it in the lower case the DSF profiles require.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Thumbprint(text.to_ascii_lowercase()))
    }

    /// The 128 lower-case hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({}…)", &self.0[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_lower_case_hex_sha512() {
        let t = Thumbprint::of_der(b"abc");
        assert_eq!(
            t.as_str(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn parse_normalises_case_and_rejects_garbage() {
        let upper = Thumbprint::of_der(b"x").as_str().to_ascii_uppercase();
        assert_eq!(Thumbprint::parse(&upper), Some(Thumbprint::of_der(b"x")));
        assert_eq!(Thumbprint::parse("abc"), None);
        assert_eq!(Thumbprint::parse(&"g".repeat(128)), None);
    }
}

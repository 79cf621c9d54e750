//! Verifying the provider's tokens (ID tokens, JWT access tokens, logout tokens) against its
//! published keys, and reading from them who the user is: e-mail, roles and groups, as the
//! Java DSF reads them (Keycloak's `realm_access.roles`, `resource_access.<client>.roles` as
//! `<client>.<role>`, and `groups`).

use super::provider::Provider;
use crate::{Error, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Signature algorithms accepted: the provider's public keys only, never a shared secret.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a token must be besides well signed by the provider.
pub(crate) struct Expect<'a> {
    pub issuer: &'a str,
    /// The `aud` that must be among the token's audiences; `None` checks none.
    pub audience: Option<&'a str>,
    /// Whether `exp` must be present and in the future (logout tokens need not carry one).
    pub expires: bool,
}

fn invalid(why: impl std::fmt::Display) -> Error {
    Error::Unauthenticated(format!("OpenID Connect token refused: {why}"))
}

/// The token's claims, once its signature, issuer, audience and lifetime hold.
pub(crate) async fn verify(provider: &Provider, token: &str, expect: &Expect<'_>) -> Result<Value> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("too long"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(invalid(format!("algorithm {:?} not accepted", header.alg)));
    }
    let mut keys = provider.keys(false).await?;
    let mut key = find_key(&keys, header.kid.as_deref());
    if key.is_none() {
        // The provider may have rotated its keys since they were fetched.
        keys = provider.keys(true).await?;
        key = find_key(&keys, header.kid.as_deref());
    }
    let jwk = key.ok_or_else(|| invalid("signed with a key the provider does not publish"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(invalid)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[expect.issuer]);
    let mut required = vec!["iss"];
    match expect.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if expect.expires {
        required.push("exp");
    } else {
        validation.validate_exp = false;
    }
    validation.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(invalid)?;
    Ok(data.claims)
}

fn find_key<'a>(
    keys: &'a jsonwebtoken::jwk::JwkSet,
    kid: Option<&str>,
) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    match kid {
        Some(kid) => keys.find(kid),
        // Without a key id, only a provider with one key is unambiguous.
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
}

/// Who a token says the user is.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TokenUser {
    /// `sub`.
    pub subject: String,
    /// The provider's session (`sid`), which back-channel logout names.
    pub session: Option<String>,
    /// `email`, lower-cased; without one `<sub>.<issuer host>@oidc.invalid`, as in the Java
    /// DSF.
    pub email: String,
    /// A name for logs and pages.
    pub name: String,
    /// Realm roles, and client roles as `<client>.<role>`.
    pub roles: Vec<String>,
    /// `groups`.
    pub groups: Vec<String>,
    /// `exp`, in seconds since 1970.
    pub expires: Option<i64>,
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl TokenUser {
    /// The user the claims of one or more tokens (the ID token first) describe: the first
    /// token's identity, the roles and groups of all.
    pub(crate) fn from_claims(tokens: &[&Value]) -> Option<TokenUser> {
        let first = tokens.first()?;
        let subject = claim(first, "sub")?.to_owned();
        let issuer = claim(first, "iss").unwrap_or_default();
        let host = issuer
            .split_once("://")
            .map_or(issuer, |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or_default();
        let email = claim(first, "email")
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| format!("{subject}.{host}@oidc.invalid"));
        let name = ["name", "preferred_username"]
            .iter()
            .find_map(|n| claim(first, n))
            .unwrap_or(&email)
            .to_owned();
        let mut user = TokenUser {
            session: claim(first, "sid").map(str::to_owned),
            expires: first.get("exp").and_then(Value::as_i64),
            subject,
            email,
            name,
            roles: Vec::new(),
            groups: Vec::new(),
        };
        for token in tokens {
            let realm_roles = strings(token.get("realm_access").and_then(|r| r.get("roles")));
            let client_roles = token
                .get("resource_access")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .flat_map(|(client, access)| {
                    strings(access.get("roles"))
                        .into_iter()
                        .map(move |role| format!("{client}.{role}"))
                });
            for role in realm_roles.into_iter().chain(client_roles) {
                if !user.roles.contains(&role) {
                    user.roles.push(role);
                }
            }
            for group in strings(token.get("groups")) {
                if !user.groups.contains(&group) {
                    user.groups.push(group);
                }
            }
        }
        Some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_and_groups_are_read_as_the_java_dsf_reads_them() {
        let id = json!({"sub": "u1", "iss": "https://idp.example.org/realms/dsf", "sid": "s1",
            "realm_access": {"roles": ["dsf-admin", 7]},
            "resource_access": {"dsf-fhir": {"roles": ["start"]}}, "exp": 1});
        let access = json!({"sub": "u1", "groups": ["/researchers"],
            "realm_access": {"roles": ["dsf-admin", "reader"]}});
        let user = TokenUser::from_claims(&[&id, &access]).expect("user");
        assert_eq!(user.email, "u1.idp.example.org@oidc.invalid");
        assert_eq!(user.roles, vec!["dsf-admin", "dsf-fhir.start", "reader"]);
        assert_eq!(user.groups, vec!["/researchers"]);
        assert_eq!(user.session.as_deref(), Some("s1"));
        let named = json!({"sub": "u2", "email": "Alice@Example.org", "name": "Alice"});
        let user = TokenUser::from_claims(&[&named]).expect("user");
        assert_eq!(
            (user.email.as_str(), user.name.as_str()),
            ("alice@example.org", "Alice")
        );
        assert!(TokenUser::from_claims(&[&json!({"email": "x@y.org"})]).is_none());
    }
}

//! The role configuration of local users (`DEV_DSF_FHIR_SERVER_ROLECONFIG`), in the Java
//! DSF's YAML form: a list of named rules, each matching callers by certificate
//! `thumbprint`, `email`, `token-role` or `token-group`, and granting `dsf-role`s (for all
//! resource types, or `CREATE: [Task]` for some) and `practitioner-role`s (`system|code`).
//!
//! ```yaml
//! - admin:
//!     thumbprint: 6f1e…(128 hex digits)
//!     dsf-role: [CREATE, READ, UPDATE, DELETE, SEARCH, HISTORY]
//!     practitioner-role: http://dsf.dev/fhir/CodeSystem/practitioner-role|DSF_ADMIN
//! - reader:
//!     thumbprint: [0a1b…, 2c3d…]
//!     dsf-role: [READ: [Task, QuestionnaireResponse], SEARCH]
//! ```
//!
//! As in the Java DSF, values that do not fit (a malformed thumbprint, an unknown role) are
//! left out with a warning; only text that is not YAML, or not a list of rules, is an error.

use super::identity::LocalUser;
use super::roles::{DsfRole, Role};
use crate::{Error, Result};
use dsf_core::Thumbprint;
use yaml_rust2::{Yaml, YamlLoader};

/// One rule of the role configuration.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RoleRule {
    /// The rule's name, for logs.
    pub name: String,
    /// Certificates it matches, by thumbprint.
    pub thumbprints: Vec<Thumbprint>,
    /// E-mail addresses it matches (of a certificate or a token).
    pub emails: Vec<String>,
    /// OpenID Connect token roles it matches.
    pub token_roles: Vec<String>,
    /// OpenID Connect token groups it matches.
    pub token_groups: Vec<String>,
    /// The DSF roles it gives.
    pub dsf_roles: Vec<DsfRole>,
    /// `(system, code)`.
    pub practitioner_roles: Vec<(String, String)>,
}

/// The parsed role configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleConfig {
    /// The rules, in file order.
    pub rules: Vec<RoleRule>,
}

fn text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.trim().to_owned()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        _ => None,
    }
}

/// A value that may be given once or as a list.
fn texts(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Array(items) => items.iter().filter_map(text).collect::<Vec<_>>(),
        single => text(single).into_iter().collect(),
    }
    .into_iter()
    .filter(|v| !v.is_empty())
    .collect()
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && !local.contains(char::is_whitespace)
        && labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels.last().is_some_and(|tld| {
            (2..=6).contains(&tld.len()) && tld.chars().all(|c| c.is_ascii_alphabetic())
        })
}

/// `READ` or `READ: [Task, Binary]`.
fn dsf_roles(rule: &str, value: &Yaml) -> Vec<DsfRole> {
    let items: Vec<&Yaml> = match value {
        Yaml::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut roles = Vec::new();
    for item in items {
        let parsed = match item {
            Yaml::String(name) => Role::parse(name).map(DsfRole::all),
            Yaml::Hash(map) if map.len() == 1 => map.iter().next().and_then(|(name, types)| {
                let role = Role::parse(&text(name)?)?;
                let types = texts(types);
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                Some(DsfRole::only(role, &types))
            }),
            _ => None,
        };
        match parsed {
            Some(role) => roles.push(role),
            None => tracing::warn!(rule, value = ?item, "unknown or malformed dsf-role left out"),
        }
    }
    roles
}

impl RoleConfig {
    /// Parses the YAML text; an empty text is an empty configuration.
    pub fn parse(yaml: &str) -> Result<RoleConfig> {
        if yaml.trim().is_empty() {
            return Ok(RoleConfig::default());
        }
        let documents = YamlLoader::load_from_str(yaml)
            .map_err(|e| Error::Invalid(format!("role configuration is not YAML: {e}")))?;
        let Some(Yaml::Array(entries)) = documents.into_iter().next() else {
            return Err(Error::Invalid(
                "role configuration must be a list of rules (`- name: {thumbprint: …, dsf-role: …}`)"
                    .into(),
            ));
        };
        let mut rules = Vec::new();
        for entry in &entries {
            let Yaml::Hash(named) = entry else {
                tracing::warn!(value = ?entry, "role configuration entry is not a rule; left out");
                continue;
            };
            for (name, properties) in named {
                let Some(name) = text(name) else { continue };
                let Yaml::Hash(properties) = properties else {
                    tracing::warn!(rule = %name, "role configuration rule has no properties; left out");
                    continue;
                };
                let mut rule = RoleRule {
                    name: name.clone(),
                    ..RoleRule::default()
                };
                for (key, value) in properties {
                    match text(key).as_deref() {
                        Some("thumbprint") => {
                            for t in texts(value) {
                                // Lower-case only, as the Java DSF's pattern.
                                match Thumbprint::parse(&t).filter(|p| p.as_str() == t) {
                                    Some(thumbprint) => rule.thumbprints.push(thumbprint),
                                    None => {
                                        tracing::warn!(rule = %name, thumbprint = %t, "malformed thumbprint (128 lower-case hex digits) left out")
                                    }
                                }
                            }
                        }
                        Some("email") => {
                            for email in texts(value) {
                                if valid_email(&email) {
                                    rule.emails.push(email);
                                } else {
                                    tracing::warn!(rule = %name, email = %email, "malformed email left out");
                                }
                            }
                        }
                        Some("token-role") => rule.token_roles.extend(texts(value)),
                        Some("token-group") => rule.token_groups.extend(texts(value)),
                        Some("dsf-role") => rule.dsf_roles.extend(dsf_roles(&name, value)),
                        Some("practitioner-role") => {
                            for role in texts(value) {
                                match role.split_once('|') {
                                    Some((system, code))
                                        if !system.is_empty()
                                            && !code.is_empty()
                                            && !code.contains('|') =>
                                    {
                                        rule.practitioner_roles
                                            .push((system.to_owned(), code.to_owned()))
                                    }
                                    _ => {
                                        tracing::warn!(rule = %name, role = %role, "practitioner-role is not system|code; left out")
                                    }
                                }
                            }
                        }
                        other => {
                            tracing::warn!(rule = %name, property = ?other, "unknown role configuration property left out")
                        }
                    }
                }
                rules.push(rule);
            }
        }
        Ok(RoleConfig { rules })
    }

    /// The local users of the rules: one per thumbprint, with the roles of every rule naming
    /// it (its practitioner identifier the first e-mail of such a rule, if any), and one per
    /// rule that names e-mail addresses, token roles or token groups, matched by any of them.
    /// A certificate or token matching several gets the roles of all (see `identity`).
    pub fn users(&self) -> Vec<LocalUser> {
        let mut users: Vec<LocalUser> = Vec::new();
        for rule in &self.rules {
            for thumbprint in &rule.thumbprints {
                let index = match users
                    .iter()
                    .position(|u| u.thumbprint.as_ref() == Some(thumbprint))
                {
                    Some(index) => index,
                    None => {
                        users.push(LocalUser::new(&rule.name, thumbprint.clone(), &[]));
                        users.len() - 1
                    }
                };
                let user = &mut users[index];
                user.add_roles(&rule.dsf_roles, &rule.practitioner_roles);
                if user.practitioner_identifier.is_none() {
                    user.practitioner_identifier = rule.emails.first().cloned();
                }
            }
            let by_token = !rule.token_roles.is_empty() || !rule.token_groups.is_empty();
            if !rule.emails.is_empty() || by_token {
                users.push(LocalUser {
                    name: rule.name.clone(),
                    thumbprint: None,
                    emails: rule.emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
                    token_roles: rule.token_roles.clone(),
                    token_groups: rule.token_groups.clone(),
                    roles: rule.dsf_roles.clone(),
                    practitioner_roles: rule.practitioner_roles.clone(),
                    practitioner_identifier: None,
                });
            }
        }
        users
    }

    /// Whether any rule matches only by OpenID Connect token role or group: those callers are
    /// recognised only where OpenID Connect is configured.
    pub fn has_token_only_rules(&self) -> bool {
        self.rules.iter().any(|r| {
            r.thumbprints.is_empty()
                && r.emails.is_empty()
                && (!r.token_roles.is_empty() || !r.token_groups.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thumbprint(digit: char) -> String {
        std::iter::repeat_n(digit, 128).collect()
    }

    #[test]
    fn rules_as_the_java_dsf_writes_them() {
        let yaml = format!(
            "- admin:\n    thumbprint: {a}\n    email: admin@dsf.test\n    dsf-role: [CREATE, READ, UPDATE, DELETE, SEARCH, HISTORY, PERMANENT_DELETE]\n    practitioner-role: http://dsf.dev/fhir/CodeSystem/practitioner-role|DSF_ADMIN\n\
             - reader:\n    thumbprint: [{b}, NOT-A-THUMBPRINT]\n    dsf-role:\n      - READ: [Task, QuestionnaireResponse]\n      - SEARCH\n      - FLY\n\
             - both:\n    thumbprint: {a}\n    dsf-role: WEBSOCKET\n\
             - oidc:\n    token-role: dsf-admin\n    dsf-role: [READ]\n",
            a = thumbprint('a'),
            b = thumbprint('b'),
        );
        let config = RoleConfig::parse(&yaml).expect("parses");
        assert_eq!(config.rules.len(), 4);
        assert_eq!(config.rules[1].thumbprints.len(), 1);
        assert_eq!(
            config.rules[1].dsf_roles,
            vec![
                DsfRole::only(Role::Read, &["Task", "QuestionnaireResponse"]),
                DsfRole::all(Role::Search)
            ]
        );
        let users = config.users();
        // The admin by thumbprint, the admin by e-mail, the reader, the token user.
        assert_eq!(users.len(), 4);
        assert_eq!(users[3].token_roles, vec!["dsf-admin".to_owned()]);
        assert!(users[3].matches_token("x@y.org", &["dsf-admin".into()], &[]));
        assert!(!users[3].matches_token("admin@dsf.test", &[], &[]));
        assert!(users[1].matches_token("admin@dsf.test", &[], &[]));
        assert_eq!(users[1].emails, vec!["admin@dsf.test".to_owned()]);
        assert_eq!(users[1].thumbprint, None);
        assert!(users[1]
            .roles
            .contains(&DsfRole::all(Role::PermanentDelete)));
        let admin = &users[0];
        assert_eq!(admin.name, "admin");
        assert!(admin.roles.contains(&DsfRole::all(Role::PermanentDelete)));
        assert!(admin.roles.contains(&DsfRole::all(Role::Websocket)));
        assert_eq!(
            admin.practitioner_roles,
            vec![(
                "http://dsf.dev/fhir/CodeSystem/practitioner-role".to_owned(),
                "DSF_ADMIN".to_owned()
            )]
        );
        assert_eq!(
            admin.practitioner_identifier.as_deref(),
            Some("admin@dsf.test")
        );
        assert!(config.has_token_only_rules());
    }

    #[test]
    fn what_is_not_a_rule_list_is_an_error() {
        assert_eq!(RoleConfig::parse("").expect("empty"), RoleConfig::default());
        assert!(RoleConfig::parse("admin: {thumbprint: x}").is_err());
        assert!(RoleConfig::parse("- [unclosed").is_err());
        assert!(valid_email("a.b@c-d.example.org"));
        assert!(!valid_email("no-at.example.org"));
        assert!(!valid_email("a@localhost"));
    }
}

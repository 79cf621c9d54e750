//! Parsing of FHIR search and history query strings into a backend-neutral form.

use super::params::{find_param, params_of, ParamKind, SearchParam};
use crate::date::{parse_date_range, DateRange};
use crate::reference::normalise_reference;
use crate::resource_type::supported_type;
use crate::{Error, Result};

/// Date comparison prefixes the DSF supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `eq` (the default): within the range.
    Eq,
    /// `ne`: outside it.
    Ne,
    /// `gt`: after it.
    Gt,
    /// `lt`: before it.
    Lt,
    /// `ge`: within or after it.
    Ge,
    /// `le`: within or before it.
    Le,
}

/// One alternative of a search clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `system`: `None` any system, `Some(None)` no system (`|code`), `Some(Some(s))` that system.
    Token {
        /// The system: `None` any, `Some(None)` none, `Some(Some(s))` that one.
        system: Option<Option<String>>,
        /// The code; `None` for `system|` (any code of the system).
        code: Option<String>,
    },
    /// Lower-cased prefix.
    StartsWith(String),
    /// Lower-cased substring.
    Contains(String),
    /// Exact match of the stored value (strings with `:exact`, uris, references).
    Equals(String),
    /// Prefix of the stored value (`:below`).
    Below(String),
    /// A canonical URL, optionally with a version.
    Canonical {
        /// The URL.
        url: String,
        /// The version after `|`, if given.
        version: Option<String>,
    },
    /// A date compared as a millisecond range.
    Date {
        /// How the range is compared.
        prefix: Prefix,
        /// The date, as the range of milliseconds it covers.
        range: DateRange,
    },
}

/// One search parameter occurrence: its alternatives are ORed, clauses are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The index parameter name (e.g. `requester:identifier` for logical references); `_id`
    /// is answered from the id column with [`Condition::Equals`] alternatives.
    pub param: String,
    /// `:not`: matches what none of the alternatives match.
    pub negate: bool,
    /// The alternatives (the comma-separated values).
    pub any_of: Vec<Condition>,
}

/// What a search sorts by.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// `_id`.
    Id,
    /// `_lastUpdated`.
    LastUpdated,
    /// A search parameter of the type, and its kind.
    Param(String, ParamKind),
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// What it sorts by.
    pub key: SortKey,
    /// Written with a leading `-`.
    pub descending: bool,
}

/// `_include` (`source_type` is the searched type) or `_revinclude` (`source_type` is the type
/// holding the reference).
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The type holding the reference.
    pub source_type: &'static str,
    /// The reference parameter.
    pub param: &'static str,
    /// The referenced type, when the include names one.
    pub target_type: Option<&'static str>,
    /// The original text, for self links.
    pub text: String,
}

/// A parsed search: what to match, how to sort and page, what to include. Build one with
/// [`SearchQuery::on`] or parse one from a URL's query with [`SearchQuery::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The searched type.
    pub resource_type: &'static str,
    /// What to match; all must hold.
    pub clauses: Vec<Clause>,
    /// `_sort`, in order.
    pub sort: Vec<Sort>,
    /// `_count`: results per page.
    pub count: usize,
    /// 1-based.
    pub page: usize,
    /// `_include`s.
    pub includes: Vec<Include>,
    /// `_revinclude`s.
    pub revincludes: Vec<Include>,
    /// `_summary=count`: the total only.
    pub summary_count: bool,
    /// Parameters this server does not support: an error under `Prefer: handling=strict`,
    /// a warning otherwise.
    pub unsupported: Vec<String>,
    /// Only resources readable with these grants, includes too; `None` for all (the server's
    /// own lookups, conditional writes).
    pub visible_to: Option<crate::access::ReadGrants>,
}

/// Upper bound of `_count`, so that one request cannot make the server assemble a huge page.
pub const MAX_COUNT: usize = 1000;
/// Most parameters one search may have (`_format` and `_pretty` aside). Each becomes a
/// clause of the database query, and planning cost grows steeply with their number.
pub const MAX_PARAMETERS: usize = 24;
/// Most comma-separated alternatives one parameter may have.
pub const MAX_ALTERNATIVES: usize = 100;
/// Highest `_page`: deeper pages cost the database an ever longer skip.
pub const MAX_PAGE: usize = 10_000;

/// Splits `a=1&b=x%2Cy` into decoded pairs (`+` is a space, as in form bodies).
pub fn parse_query_string(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Splits a parameter value at unescaped commas; `\,` stands for a literal comma.
fn split_alternatives(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('\\') | Some('|')) => {
                if let Some(next) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(next);
                    }
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn invalid(name: &str, value: &str, why: &str) -> Error {
    Error::Invalid(format!("search parameter {name}={value}: {why}"))
}

fn date_condition(name: &str, text: &str) -> Result<Condition> {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
    ];
    let (prefix, rest) = prefixes
        .iter()
        .find_map(|(p, prefix)| text.strip_prefix(p).map(|rest| (*prefix, rest)))
        .unwrap_or((Prefix::Eq, text));
    let range = parse_date_range(rest).ok_or_else(|| invalid(name, text, "not a date"))?;
    Ok(Condition::Date { prefix, range })
}

fn token_condition(text: &str) -> Condition {
    match text.split_once('|') {
        None => Condition::Token {
            system: None,
            code: Some(text.to_owned()),
        },
        Some((system, code)) => Condition::Token {
            system: Some((!system.is_empty()).then(|| system.to_owned())),
            code: (!code.is_empty()).then(|| code.to_owned()),
        },
    }
}

fn reference_conditions(param: &SearchParam, text: &str, base_url: &str) -> Vec<Condition> {
    let relative = normalise_reference(text, base_url);
    if relative.contains('/') {
        vec![Condition::Equals(relative)]
    } else {
        // A bare id matches it on any of the parameter's target types.
        param
            .targets
            .iter()
            .map(|t| Condition::Equals(format!("{t}/{relative}")))
            .collect()
    }
}

/// Parses the clause for one `name[:modifier]=value` pair. `Ok(None)` means the parameter or
/// modifier is not supported.
fn parse_clause(
    resource_type: &str,
    name: &str,
    value: &str,
    base_url: &str,
) -> Result<Option<Clause>> {
    let (base_name, modifier) = match name.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (name, None),
    };
    if let Some(c) = value
        .chars()
        .find(|c| (*c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(invalid(
            name,
            &value.escape_debug().to_string(),
            &format!("control character U+{:04X} is not allowed", c as u32),
        ));
    }
    let alternatives = split_alternatives(value);
    if alternatives.len() > MAX_ALTERNATIVES {
        return Err(invalid(
            name,
            &format!("{} values", alternatives.len()),
            &format!("at most {MAX_ALTERNATIVES} comma-separated values are allowed"),
        ));
    }
    if alternatives.iter().any(|a| a.is_empty()) {
        return Err(invalid(name, value, "empty value"));
    }
    if base_name == "_id" {
        if modifier.is_some() {
            return Ok(None);
        }
        return Ok(Some(Clause {
            param: "_id".into(),
            negate: false,
            any_of: alternatives.into_iter().map(Condition::Equals).collect(),
        }));
    }
    let Some(param) = find_param(resource_type, base_name).filter(|p| !p.internal) else {
        return Ok(None);
    };
    let mut clause = Clause {
        param: param.name.to_owned(),
        negate: false,
        any_of: Vec::new(),
    };
    for alt in &alternatives {
        let alt = alt.as_str();
        match (param.kind, modifier) {
            (ParamKind::Token, None) => clause.any_of.push(token_condition(alt)),
            (ParamKind::Token, Some("not")) => {
                clause.negate = true;
                clause.any_of.push(token_condition(alt));
            }
            (ParamKind::String, None) => clause
                .any_of
                .push(Condition::StartsWith(alt.to_lowercase())),
            (ParamKind::String, Some("exact")) => {
                clause.any_of.push(Condition::Equals(alt.to_owned()))
            }
            (ParamKind::String, Some("contains")) => {
                clause.any_of.push(Condition::Contains(alt.to_lowercase()))
            }
            (ParamKind::Uri, None) => clause.any_of.push(Condition::Equals(alt.to_owned())),
            (ParamKind::Uri | ParamKind::Canonical, Some("below")) => {
                clause.any_of.push(Condition::Below(alt.to_owned()))
            }
            (ParamKind::Canonical, None) => {
                let (url, version) = match alt.split_once('|') {
                    Some((u, v)) => (u.to_owned(), Some(v.to_owned())),
                    None => (alt.to_owned(), None),
                };
                clause.any_of.push(Condition::Canonical { url, version });
            }
            (ParamKind::Reference, None) => clause
                .any_of
                .extend(reference_conditions(param, alt, base_url)),
            (ParamKind::Reference, Some("identifier")) => {
                clause.param = format!("{}:identifier", param.name);
                clause.any_of.push(token_condition(alt));
            }
            (ParamKind::Reference, Some(target)) if supported_type(target).is_some() => {
                let id = normalise_reference(alt, base_url);
                let id = id.rsplit('/').next().unwrap_or(&id).to_owned();
                clause
                    .any_of
                    .push(Condition::Equals(format!("{target}/{id}")));
            }
            (ParamKind::Date, None) => clause.any_of.push(date_condition(name, alt)?),
            _ => return Ok(None),
        }
    }
    Ok(Some(clause))
}

fn parse_include(text: &str, searched_type: &'static str, reverse: bool) -> Option<Include> {
    let mut parts = text.split(':');
    let source = supported_type(parts.next()?)?;
    let param_name = parts.next()?;
    let target = match parts.next() {
        Some(t) => Some(supported_type(t)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    let param = params_of(source)
        .iter()
        .find(|p| p.name == param_name && p.include && p.kind == ParamKind::Reference)?;
    if reverse {
        let points_here = param.targets.is_empty() || param.targets.contains(&searched_type);
        if !points_here || target.is_some_and(|t| t != searched_type) {
            return None;
        }
    } else if source != searched_type
        || target.is_some_and(|t| !param.targets.is_empty() && !param.targets.contains(&t))
    {
        return None;
    }
    Some(Include {
        source_type: source,
        param: param.name,
        target_type: target,
        text: text.to_owned(),
    })
}

fn parse_count(value: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .map(|c| c.min(MAX_COUNT))
        .map_err(|_| invalid("_count", value, "not a non-negative integer"))
}

fn parse_page(value: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .filter(|p| (1..=MAX_PAGE).contains(p))
        .ok_or_else(|| {
            invalid(
                "_page",
                value,
                &format!("not an integer from 1 to {MAX_PAGE}"),
            )
        })
}

impl SearchQuery {
    /// The first page of `count` resources of `resource_type` matching all `clauses`: no
    /// sort, no includes, no read-access filter (the server's own lookups).
    pub fn of_clauses(resource_type: &'static str, clauses: Vec<Clause>, count: usize) -> Self {
        SearchQuery {
            resource_type,
            clauses,
            sort: Vec::new(),
            count,
            page: 1,
            includes: Vec::new(),
            revincludes: Vec::new(),
            summary_count: false,
            unsupported: Vec::new(),
            visible_to: None,
        }
    }

    /// Parses decoded `name=value` pairs for a search on `resource_type`. `_format` and
    /// `_pretty` are left to the caller.
    pub fn parse(
        resource_type: &'static str,
        pairs: &[(String, String)],
        default_count: usize,
        base_url: &str,
    ) -> Result<SearchQuery> {
        let mut query =
            SearchQuery::of_clauses(resource_type, Vec::new(), default_count.min(MAX_COUNT));
        let mut parameters = pairs
            .iter()
            .filter(|(name, _)| name != "_format" && name != "_pretty");
        if let Some((name, _)) = parameters.nth(MAX_PARAMETERS) {
            return Err(Error::Invalid(format!(
                "search parameter {name}: more than {MAX_PARAMETERS} search parameters in one request"
            )));
        }
        for (name, value) in pairs {
            match name.as_str() {
                "_format" | "_pretty" => {}
                "_count" => query.count = parse_count(value)?,
                "_page" => query.page = parse_page(value)?,
                "_summary" => match value.as_str() {
                    "count" => query.summary_count = true,
                    "false" => {}
                    _ => query.unsupported.push(format!("{name}={value}")),
                },
                "_sort" => {
                    for key in value.split(',').filter(|k| !k.is_empty()) {
                        let (descending, key_name) = match key.strip_prefix('-') {
                            Some(k) => (true, k),
                            None => (false, key.trim_start_matches('+')),
                        };
                        let key = match key_name {
                            "_id" => SortKey::Id,
                            "_lastUpdated" => SortKey::LastUpdated,
                            other => match find_param(resource_type, other).filter(|p| !p.internal)
                            {
                                Some(p) => SortKey::Param(p.name.to_owned(), p.kind),
                                None => {
                                    return Err(invalid("_sort", value, "unknown sort parameter"))
                                }
                            },
                        };
                        query.sort.push(Sort { key, descending });
                    }
                }
                "_include" | "_revinclude" => {
                    let reverse = name == "_revinclude";
                    match parse_include(value, resource_type, reverse) {
                        Some(include) if reverse => query.revincludes.push(include),
                        Some(include) => query.includes.push(include),
                        None => query.unsupported.push(format!("{name}={value}")),
                    }
                }
                _ => match parse_clause(resource_type, name, value, base_url)? {
                    Some(clause) => query.clauses.push(clause),
                    None => query.unsupported.push(format!("{name}={value}")),
                },
            }
        }
        Ok(query)
    }

    /// Criteria for conditional interactions (`If-None-Exist`, conditional update and delete):
    /// result parameters are ignored, unsupported parameters and empty criteria are errors.
    pub fn parse_criteria(
        resource_type: &'static str,
        criteria: &str,
        base_url: &str,
    ) -> Result<SearchQuery> {
        let criteria = criteria
            .strip_prefix(resource_type)
            .map(|rest| rest.trim_start_matches('?'))
            .unwrap_or(criteria);
        SearchQuery::criteria_from_pairs(resource_type, &parse_query_string(criteria), base_url)
    }

    /// [`SearchQuery::parse_criteria`] for already decoded pairs.
    pub fn criteria_from_pairs(
        resource_type: &'static str,
        pairs: &[(String, String)],
        base_url: &str,
    ) -> Result<SearchQuery> {
        let pairs: Vec<_> = pairs
            .iter()
            .filter(|(k, _)| {
                !k.starts_with('_') || k == "_id" || k == "_profile" || k == "_lastUpdated"
            })
            .cloned()
            .collect();
        let query = SearchQuery::parse(resource_type, &pairs, 2, base_url)?;
        if let Some(bad) = query.unsupported.first() {
            return Err(Error::Invalid(format!(
                "unsupported criteria parameter '{bad}'"
            )));
        }
        if query.clauses.is_empty() {
            return Err(Error::Invalid("conditional criteria are empty".into()));
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(ty: &'static str, s: &str) -> Result<SearchQuery> {
        SearchQuery::parse(ty, &parse_query_string(s), 20, "https://a.test/fhir")
    }

    #[test]
    fn tokens_strings_and_modifiers() {
        let query = q("Task", "status=requested,in-progress&identifier=http://sys|v&status:not=failed&_count=5&_page=2").unwrap();
        assert_eq!(query.clauses.len(), 3);
        assert_eq!(query.clauses[0].any_of.len(), 2);
        assert_eq!(
            query.clauses[1].any_of[0],
            Condition::Token {
                system: Some(Some("http://sys".into())),
                code: Some("v".into())
            }
        );
        assert!(query.clauses[2].negate);
        assert_eq!((query.count, query.page), (5, 2));
        let org = q("Organization", "name:contains=ALP&endpoint=e1").unwrap();
        assert_eq!(org.clauses[0].any_of[0], Condition::Contains("alp".into()));
        assert_eq!(
            org.clauses[1].any_of[0],
            Condition::Equals("Endpoint/e1".into())
        );
    }

    #[test]
    fn logical_reference_and_canonical() {
        let query = q(
            "OrganizationAffiliation",
            "primary-organization:identifier=http://dsf.dev/sid/organization-identifier|parent",
        )
        .unwrap();
        assert_eq!(query.clauses[0].param, "primary-organization:identifier");
        let ad = q(
            "ActivityDefinition",
            "url=http://dsf.dev/bpe/Process/ping|1.0",
        )
        .unwrap();
        assert_eq!(
            ad.clauses[0].any_of[0],
            Condition::Canonical {
                url: "http://dsf.dev/bpe/Process/ping".into(),
                version: Some("1.0".into())
            }
        );
    }

    #[test]
    fn unsupported_and_invalid() {
        let query = q(
            "Task",
            "foo=bar&status:exact=x&_include=Task:owner&_summary=text",
        )
        .unwrap();
        assert_eq!(query.unsupported.len(), 4);
        assert!(q("Task", "authored-on=notadate").is_err());
        assert!(q("Task", "_count=-1").is_err());
        assert!(q("Task", "_page=0").is_err());
        assert!(q("Task", "_sort=nope").is_err());
        assert!(q("Task", "status=").is_err());
        assert!(q("Task", "_thumbprint=x").unwrap().unsupported.len() == 1);
    }

    #[test]
    fn includes() {
        let query = q(
            "Endpoint",
            "_include=Endpoint:organization&_revinclude=Organization:endpoint",
        )
        .unwrap();
        assert_eq!(query.includes[0].param, "organization");
        assert_eq!(query.revincludes[0].source_type, "Organization");
        assert!(
            q("Endpoint", "_revinclude=Task:requester")
                .unwrap()
                .unsupported
                .len()
                == 1
        );
    }

    #[test]
    fn criteria_need_a_supported_selection() {
        assert!(SearchQuery::parse_criteria("Task", "identifier=a|b", "").is_ok());
        assert!(SearchQuery::parse_criteria("Task", "Task?identifier=a|b&_count=3", "").is_ok());
        assert!(SearchQuery::parse_criteria("Task", "", "").is_err());
        assert!(SearchQuery::parse_criteria("Task", "foo=bar", "").is_err());
    }

    #[test]
    fn escaped_commas() {
        assert_eq!(split_alternatives(r"a\,b,c"), ["a,b", "c"]);
    }
}

/// Builds a [`SearchQuery`] in code: the resource type checked against the supported ones,
/// each parameter parsed as it would be from a URL, and a parameter this server does not
/// support an error rather than a warning.
///
/// ```
/// use dsf_fhir::search::SearchQuery;
/// let query = SearchQuery::on("Task")?
///     .with("status", "requested")
///     .sort_by("-_lastUpdated")
///     .count(20)
///     .build("https://dsf.example.org/fhir")?;
/// assert_eq!(query.resource_type, "Task");
/// assert!(SearchQuery::on("Patients").is_err());
/// # Ok::<(), dsf_fhir::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SearchBuilder {
    resource_type: &'static str,
    pairs: Vec<(String, String)>,
}

impl SearchQuery {
    /// Starts a search on `resource_type`; an error if the server has no such type.
    pub fn on(resource_type: &str) -> Result<SearchBuilder> {
        let resource_type =
            crate::resource_type::supported_type(resource_type).ok_or_else(|| {
                Error::NotSupported(format!("resource type '{resource_type}' is not supported"))
            })?;
        Ok(SearchBuilder {
            resource_type,
            pairs: Vec::new(),
        })
    }
}

impl SearchBuilder {
    /// Adds `name=value` as in a URL (`status=requested`, `_lastUpdated=gt2026-01-01`,
    /// `identifier=system|value`); several values of one call are alternatives (`a,b`).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.pairs.push((name.to_owned(), value.into()));
        self
    }

    /// `_count`: results per page.
    pub fn count(self, count: usize) -> Self {
        self.with("_count", count.to_string())
    }

    /// `_sort`: `_lastUpdated`, `-_lastUpdated`, `_id` or a search parameter.
    pub fn sort_by(self, key: &str) -> Self {
        self.with("_sort", key)
    }

    /// The query, or the first parameter that does not parse or is not supported.
    pub fn build(self, base_url: &str) -> Result<SearchQuery> {
        let query = SearchQuery::parse(self.resource_type, &self.pairs, 20, base_url)?;
        match query.unsupported.first() {
            Some(parameter) => Err(Error::NotSupported(format!(
                "search parameter {parameter} is not supported on {}",
                self.resource_type
            ))),
            None => Ok(query),
        }
    }
}

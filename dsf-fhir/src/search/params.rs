//! The search parameters the Java DSF FHIR server supports, per resource type.

/// How a parameter's values are indexed and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `system|code` pairs from codes, Codings, CodeableConcepts, Identifiers and booleans.
    Token,
    /// Case-insensitive starts-with by default; `:exact` and `:contains`.
    String,
    /// Exact; `:below` for prefix.
    Uri,
    /// A canonical URL, indexed as `url|version` where a version exists; searching `url`
    /// matches every version, `url|version` one.
    Canonical,
    /// A literal reference, indexed relative (`Type/id`); `:identifier` for logical references.
    Reference,
    /// Instants and partial dates as half-open millisecond ranges.
    Date,
}

/// A search parameter of a resource type: its name, kind and where its values are.
#[derive(Debug)]
pub struct SearchParam {
    /// The name in URLs (`identifier`, `status`).
    pub name: &'static str,
    /// How its values are compared.
    pub kind: ParamKind,
    /// Dotted JSON paths (arrays are walked through).
    pub paths: &'static [&'static str],
    /// Reference target types; the first is assumed for a bare id.
    pub targets: &'static [&'static str],
    /// Whether `_include=<Type>:<name>` (and the matching `_revinclude`) is supported.
    pub include: bool,
    /// Indexed for the server's own look-ups but not searchable over REST.
    pub internal: bool,
}

const fn p(name: &'static str, kind: ParamKind, paths: &'static [&'static str]) -> SearchParam {
    SearchParam {
        name,
        kind,
        paths,
        targets: &[],
        include: false,
        internal: false,
    }
}

const fn r(
    name: &'static str,
    paths: &'static [&'static str],
    targets: &'static [&'static str],
    include: bool,
) -> SearchParam {
    SearchParam {
        name,
        kind: ParamKind::Reference,
        paths,
        targets,
        include,
        internal: false,
    }
}

use ParamKind::*;

/// `_id` is answered from the id column; `_lastUpdated` and `_profile` are indexed like others.
pub const COMMON: &[SearchParam] = &[
    p("_lastUpdated", Date, &["meta.lastUpdated"]),
    p("_profile", Canonical, &["meta.profile"]),
];

const IDENTIFIER: SearchParam = p("identifier", Token, &["identifier"]);
const ACTIVE: SearchParam = p("active", Token, &["active"]);
const STATUS: SearchParam = p("status", Token, &["status"]);

/// A `'static` slice of parameters built with the const constructors above.
macro_rules! list {
    ($($param:expr),* $(,)?) => {{
        static PARAMS: &[SearchParam] = &[$($param),*];
        PARAMS
    }};
}

/// The parameters of definitional resources (url, version, name, status, date, identifier).
macro_rules! definitional {
    () => {
        list![
            p("date", Date, &["date"]),
            IDENTIFIER,
            p("name", String, &["name"]),
            STATUS,
            p("url", Canonical, &["url"]),
            p("version", Token, &["version"]),
        ]
    };
}

/// Internal parameter used to find the Organization presenting a client certificate.
pub const THUMBPRINT_PARAM: &str = "_thumbprint";
/// Extension of an Organization holding a client certificate's thumbprint.
pub const THUMBPRINT_EXTENSION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-certificate-thumbprint";

static ORGANIZATION: &[SearchParam] = &[
    ACTIVE,
    r("endpoint", &["endpoint"], &["Endpoint"], true),
    IDENTIFIER,
    p("name", String, &["name", "alias"]),
    p("type", Token, &["type"]),
    SearchParam {
        name: THUMBPRINT_PARAM,
        kind: Token,
        paths: &[],
        targets: &[],
        include: false,
        internal: true,
    },
];

/// The search parameters of `resource_type` (without the common ones).
pub fn params_of(resource_type: &str) -> &'static [SearchParam] {
    match resource_type {
        "ActivityDefinition"
        | "CodeSystem"
        | "Library"
        | "Questionnaire"
        | "StructureDefinition"
        | "ValueSet" => definitional!(),
        "Measure" => list![
            p("date", Date, &["date"]),
            SearchParam {
                name: "depends-on",
                kind: Canonical,
                paths: &["library"],
                targets: &["Library"],
                include: false,
                internal: false,
            },
            IDENTIFIER,
            p("name", String, &["name"]),
            STATUS,
            p("url", Canonical, &["url"]),
            p("version", Token, &["version"]),
        ],
        "Binary" => list![p("contentType", Token, &["contentType"])],
        "Bundle" => list![p("identifier", Token, &["identifier"])],
        "DocumentReference" | "Group" | "MeasureReport" => list![IDENTIFIER],
        "Endpoint" => list![
            p("address", Uri, &["address"]),
            IDENTIFIER,
            p("name", String, &["name"]),
            r(
                "organization",
                &["managingOrganization"],
                &["Organization"],
                true
            ),
            STATUS,
        ],
        "HealthcareService" => list![ACTIVE, IDENTIFIER, p("name", String, &["name"])],
        "Location" => list![IDENTIFIER, p("name", String, &["name"])],
        "NamingSystem" => list![
            p("date", Date, &["date"]),
            p("name", String, &["name"]),
            STATUS,
        ],
        "Organization" => ORGANIZATION,
        "OrganizationAffiliation" => list![
            ACTIVE,
            r("endpoint", &["endpoint"], &["Endpoint"], true),
            IDENTIFIER,
            r(
                "participating-organization",
                &["participatingOrganization"],
                &["Organization"],
                true,
            ),
            r(
                "primary-organization",
                &["organization"],
                &["Organization"],
                true
            ),
            p("role", Token, &["code"]),
        ],
        "Patient" | "Practitioner" => list![ACTIVE, IDENTIFIER],
        "PractitionerRole" => list![
            ACTIVE,
            IDENTIFIER,
            r("organization", &["organization"], &["Organization"], true),
            r("practitioner", &["practitioner"], &["Practitioner"], true),
        ],
        "Provenance" => list![],
        "QuestionnaireResponse" => list![
            r(
                "author",
                &["author"],
                &["Organization", "Practitioner", "PractitionerRole"],
                true
            ),
            p("authored", Date, &["authored"]),
            IDENTIFIER,
            SearchParam {
                name: "questionnaire",
                kind: Canonical,
                paths: &["questionnaire"],
                targets: &["Questionnaire"],
                include: false,
                internal: false,
            },
            STATUS,
            r("subject", &["subject"], &[], true),
        ],
        "ResearchStudy" => list![
            r("enrollment", &["enrollment"], &["Group"], true),
            IDENTIFIER,
            r(
                "principalinvestigator",
                &["principalInvestigator"],
                &["Practitioner", "PractitionerRole"],
                true
            ),
        ],
        "Subscription" => list![
            p("criteria", String, &["criteria"]),
            p("payload", Token, &["channel.payload"]),
            STATUS,
            p("type", Token, &["channel.type"]),
        ],
        "Task" => list![
            p("authored-on", Date, &["authoredOn"]),
            IDENTIFIER,
            p("modified", Date, &["lastModified"]),
            r(
                "requester",
                &["requester"],
                &["Organization", "Practitioner", "PractitionerRole"],
                true
            ),
            STATUS,
        ],
        _ => list![],
    }
}

/// Finds a parameter (common or type-specific) by name, including internal ones.
pub fn find_param(resource_type: &str, name: &str) -> Option<&'static SearchParam> {
    COMMON
        .iter()
        .chain(params_of(resource_type))
        .find(|p| p.name == name)
}

/// All parameters of a type that clients may use, `_id` aside.
pub fn public_params(resource_type: &str) -> impl Iterator<Item = &'static SearchParam> {
    COMMON
        .iter()
        .chain(params_of(resource_type))
        .filter(|p| !p.internal)
}

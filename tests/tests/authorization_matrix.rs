//! The authorization matrix: every resource type × caller × read access × interaction, over
//! mutual TLS, on SQLite and on PostgreSQL.
//!
//! The expected outcome of each cell comes from [`expected`], which states the DSF's rules
//! once; the test runs every cell against a real server and reports every cell that differs.
//! The same table, grouped where types behave alike, is `docs/authorization.md`'s matrix: the
//! test fails when that document no longer shows what is tested (`DSF_BLESS=1` rewrites it).

use dsf_fhir::resource_type::SUPPORTED_TYPES;
use dsf_fhir::server::Role;
use dsf_fhir::FhirClient;
use dsf_tests::fixtures::{
    activity_definition, draft_task, endpoint, organization, ping_task, tag_all, tag_local,
    tag_organization, tag_role, with_tags, ORG_SYSTEM,
};
use dsf_tests::{
    role_user_identifier, send_json, TestServer, ADMIN_IDENTIFIER, LOCAL_ORG, REMOTE_ORG,
};
use http::Method;
use serde_json::{json, Value};
use std::fmt::Write as _;

const OTHER_ORG: &str = "other.test";
const PARENT_ORG: &str = "parent.test";
const ROLE_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/organization-role";
/// The role the remote organisation holds in the parent organisation.
const REMOTE_ROLE: &str = "DIC";
/// A role nobody holds.
const UNHELD_ROLE: &str = "TTP";
const PRACTITIONER_SYSTEM: &str = "http://dsf.dev/sid/practitioner-identifier";
const QUESTIONNAIRE_AUTHORIZATION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-questionnaire-authorization";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    LocalOrganization,
    RemoteOrganization,
    Unknown,
    /// A local user holding only this role.
    User(Role),
    /// A local user with every role and the DSF_ADMIN practitioner role.
    Admin,
}

const CALLERS: [Caller; 10] = [
    Caller::LocalOrganization,
    Caller::RemoteOrganization,
    Caller::Unknown,
    Caller::User(Role::Create),
    Caller::User(Role::Read),
    Caller::User(Role::Search),
    Caller::User(Role::History),
    Caller::User(Role::Update),
    Caller::User(Role::Delete),
    Caller::Admin,
];

impl Caller {
    fn label(self) -> String {
        match self {
            Caller::LocalOrganization => "local org".into(),
            Caller::RemoteOrganization => "remote org".into(),
            Caller::Unknown => "unknown cert".into(),
            Caller::User(role) => format!("user {}", role.name()),
            Caller::Admin => "admin user".into(),
        }
    }

    fn client(self, server: &TestServer) -> &FhirClient {
        match self {
            Caller::LocalOrganization => &server.local,
            Caller::RemoteOrganization => &server.remote,
            Caller::Unknown => &server.stranger,
            Caller::User(role) => server.role_user(role),
            Caller::Admin => &server.admin,
        }
    }

    fn is_local(self) -> bool {
        matches!(
            self,
            Caller::LocalOrganization | Caller::User(_) | Caller::Admin
        )
    }

    /// The local organisation itself or an administrator: who runs Tasks and answers.
    fn runs_the_organization(self) -> bool {
        matches!(self, Caller::LocalOrganization | Caller::Admin)
    }

    /// The DSF's roles: the local organisation and administrators hold all; remote
    /// organisations read, search, read history and create Tasks; users what they are given.
    fn has_role(self, role: Role, resource_type: &str) -> bool {
        match self {
            Caller::LocalOrganization | Caller::Admin => true,
            Caller::RemoteOrganization => {
                matches!(role, Role::Read | Role::Search | Role::History)
                    || (role == Role::Create && resource_type == "Task")
            }
            Caller::Unknown => false,
            Caller::User(held) => held == role,
        }
    }

    /// How a resource names this caller as requester or author.
    fn reference(self) -> Value {
        let practitioner = |id: String| json!({"type": "Practitioner", "identifier": {"system": PRACTITIONER_SYSTEM, "value": id}});
        match self {
            Caller::LocalOrganization | Caller::Unknown => {
                json!({"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": LOCAL_ORG}})
            }
            Caller::RemoteOrganization => {
                json!({"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": REMOTE_ORG}})
            }
            Caller::User(role) => practitioner(role_user_identifier(role)),
            Caller::Admin => practitioner(ADMIN_IDENTIFIER.to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interaction {
    Create,
    Read,
    Search,
    History,
    Update,
    Delete,
}

const INTERACTIONS: [Interaction; 6] = [
    Interaction::Create,
    Interaction::Read,
    Interaction::Search,
    Interaction::History,
    Interaction::Update,
    Interaction::Delete,
];

impl Interaction {
    fn role(self) -> Role {
        match self {
            Interaction::Create => Role::Create,
            Interaction::Read => Role::Read,
            Interaction::Search => Role::Search,
            Interaction::History => Role::History,
            Interaction::Update => Role::Update,
            Interaction::Delete => Role::Delete,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Search => "search",
            Interaction::History => "history",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
        }
    }
}

/// Read-access tags of the resource types that carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    All,
    Local,
    /// LOCAL plus ORGANIZATION naming the remote organisation.
    RemoteOrganization,
    /// LOCAL plus ORGANIZATION naming an organisation that is not calling.
    OtherOrganization,
    /// LOCAL plus ROLE naming the remote organisation's role in the parent organisation.
    RemoteRole,
    /// LOCAL plus ROLE naming a role nobody holds.
    UnheldRole,
    /// No read-access tag.
    Missing,
}

const TAGS: [Tag; 7] = [
    Tag::All,
    Tag::Local,
    Tag::RemoteOrganization,
    Tag::OtherOrganization,
    Tag::RemoteRole,
    Tag::UnheldRole,
    Tag::Missing,
];

impl Tag {
    fn label(self) -> String {
        match self {
            Tag::All => "tag ALL".into(),
            Tag::Local => "tag LOCAL".into(),
            Tag::RemoteOrganization => format!("tags LOCAL + ORGANIZATION {REMOTE_ORG}"),
            Tag::OtherOrganization => format!("tags LOCAL + ORGANIZATION {OTHER_ORG}"),
            Tag::RemoteRole => {
                format!("tags LOCAL + ROLE {PARENT_ORG} {REMOTE_ROLE} (held by {REMOTE_ORG})")
            }
            Tag::UnheldRole => {
                format!("tags LOCAL + ROLE {PARENT_ORG} {UNHELD_ROLE} (held by nobody)")
            }
            Tag::Missing => "no read-access tag".into(),
        }
    }

    fn apply(self, resource: Value) -> Value {
        let tags = match self {
            Tag::All => tag_all(),
            Tag::Local => tag_local(),
            Tag::RemoteOrganization => tag_organization(REMOTE_ORG),
            Tag::OtherOrganization => tag_organization(OTHER_ORG),
            Tag::RemoteRole => tag_role(PARENT_ORG, ROLE_SYSTEM, REMOTE_ROLE),
            Tag::UnheldRole => tag_role(PARENT_ORG, ROLE_SYSTEM, UNHELD_ROLE),
            Tag::Missing => return meta_without_tags(resource),
        };
        with_tags(resource, tags)
    }

    /// Whom the tags let read (the local side reads all that is tagged LOCAL).
    fn admits(self, caller: Caller) -> bool {
        match self {
            Tag::All => true,
            Tag::Local | Tag::OtherOrganization | Tag::UnheldRole => caller.is_local(),
            Tag::RemoteOrganization | Tag::RemoteRole => {
                caller.is_local() || caller == Caller::RemoteOrganization
            }
            Tag::Missing => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskCase {
    /// A ping from the remote organisation, status requested.
    FromRemote,
    /// A ping from an organisation that is not calling, status requested.
    FromOther,
    /// A draft the local organisation keeps to start processes from.
    Draft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseCase {
    /// No questionnaire-authorization: every local practitioner may answer.
    Open,
    /// Authorized for a practitioner role nobody holds.
    Restricted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Tagged(&'static str, Tag),
    /// A Binary readable as its securityContext (a DocumentReference) is.
    BinaryInContext(Tag),
    Task(TaskCase),
    Response(ResponseCase),
}

/// Every type whose read access comes from its tags.
fn tagged_types() -> impl Iterator<Item = &'static str> {
    SUPPORTED_TYPES
        .into_iter()
        .filter(|t| !matches!(*t, "Task" | "QuestionnaireResponse"))
}

fn subjects() -> Vec<Subject> {
    let mut out = Vec::new();
    for t in tagged_types() {
        for tag in TAGS {
            out.push(Subject::Tagged(t, tag));
        }
    }
    out.push(Subject::BinaryInContext(Tag::RemoteOrganization));
    out.push(Subject::BinaryInContext(Tag::OtherOrganization));
    out.extend([TaskCase::FromRemote, TaskCase::FromOther, TaskCase::Draft].map(Subject::Task));
    out.extend([ResponseCase::Open, ResponseCase::Restricted].map(Subject::Response));
    out
}

impl Subject {
    fn resource_type(self) -> &'static str {
        match self {
            Subject::Tagged(t, _) => t,
            Subject::BinaryInContext(_) => "Binary",
            Subject::Task(_) => "Task",
            Subject::Response(_) => "QuestionnaireResponse",
        }
    }

    /// The rows of the document: tagged types that behave alike share one.
    fn row_label(self) -> String {
        match self {
            Subject::Tagged(_, tag) => format!("every tagged type | {}", tag.label()),
            Subject::BinaryInContext(tag) => format!(
                "Binary with securityContext | as its DocumentReference: {}",
                tag.label()
            ),
            Subject::Task(TaskCase::FromRemote) => {
                format!("Task | requested, requester {REMOTE_ORG}, recipient {LOCAL_ORG}")
            }
            Subject::Task(TaskCase::FromOther) => {
                format!("Task | requested, requester {OTHER_ORG}, recipient {LOCAL_ORG}")
            }
            Subject::Task(TaskCase::Draft) => format!("Task | draft of {LOCAL_ORG}"),
            Subject::Response(ResponseCase::Open) => {
                "QuestionnaireResponse | in-progress, no questionnaire-authorization".into()
            }
            Subject::Response(ResponseCase::Restricted) => {
                "QuestionnaireResponse | in-progress, authorized for a practitioner role nobody holds"
                    .into()
            }
        }
    }

    fn readable_by(self, caller: Caller) -> bool {
        match self {
            Subject::Tagged(_, tag) | Subject::BinaryInContext(tag) => tag.admits(caller),
            Subject::Task(TaskCase::FromRemote) => {
                caller.runs_the_organization() || caller == Caller::RemoteOrganization
            }
            Subject::Task(TaskCase::FromOther) => caller.runs_the_organization(),
            Subject::Task(TaskCase::Draft) => {
                caller.runs_the_organization() || matches!(caller, Caller::User(_))
            }
            Subject::Response(ResponseCase::Open) => {
                caller.runs_the_organization() || matches!(caller, Caller::User(_))
            }
            Subject::Response(ResponseCase::Restricted) => caller.runs_the_organization(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Ok,
    Hit,
    Miss,
    Invalid,
    Unauthenticated,
    Forbidden,
    NotFound,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Created => "201",
            Outcome::Ok => "200",
            Outcome::Hit => "1 hit",
            Outcome::Miss => "0 hits",
            Outcome::Invalid => "400",
            Outcome::Unauthenticated => "401",
            Outcome::Forbidden => "403",
            Outcome::NotFound => "404",
        }
    }
}

/// The DSF's rules, stated once.
fn expected(caller: Caller, interaction: Interaction, subject: Subject) -> Outcome {
    use Outcome::*;
    if caller == Caller::Unknown {
        return Unauthenticated;
    }
    if !caller.has_role(interaction.role(), subject.resource_type()) {
        return Forbidden;
    }
    let readable = subject.readable_by(caller);
    let allowed = |yes: bool, outcome: Outcome| if yes { outcome } else { Forbidden };
    match interaction {
        Interaction::Read | Interaction::History => {
            if readable {
                Ok
            } else {
                NotFound
            }
        }
        Interaction::Search => {
            if readable {
                Hit
            } else {
                Miss
            }
        }
        Interaction::Create => match subject {
            // Only local identities hold CREATE for these types.
            Subject::Tagged(_, Tag::Missing) => Invalid,
            Subject::Tagged(..) | Subject::BinaryInContext(_) => Created,
            // As the requester itself, if the process authorizes it: organisations and
            // administrators are, practitioners without a practitioner role are not.
            Subject::Task(TaskCase::FromRemote) => allowed(
                caller.runs_the_organization() || caller == Caller::RemoteOrganization,
                Created,
            ),
            // Nobody sends a Task in another organisation's name.
            Subject::Task(TaskCase::FromOther) => Forbidden,
            Subject::Task(TaskCase::Draft) | Subject::Response(_) => {
                allowed(caller.runs_the_organization(), Created)
            }
        },
        Interaction::Update => match subject {
            Subject::Tagged(_, Tag::Missing) => Invalid,
            Subject::Tagged(..) | Subject::BinaryInContext(_) => Ok,
            // requested -> in-progress, or a draft edited.
            Subject::Task(_) => allowed(caller.runs_the_organization(), Ok),
            // in-progress -> completed, answered by the caller.
            Subject::Response(ResponseCase::Open) => Ok,
            Subject::Response(ResponseCase::Restricted) => {
                allowed(caller.runs_the_organization(), Ok)
            }
        },
        Interaction::Delete => match subject {
            Subject::Tagged(..) | Subject::BinaryInContext(_) => Ok,
            Subject::Task(TaskCase::Draft) | Subject::Response(_) => {
                allowed(caller.runs_the_organization(), Ok)
            }
            // Messages are kept: only drafts are deleted.
            Subject::Task(_) => Forbidden,
        },
    }
}

/// A number never handed out before, so that resources seeded many times stay unique under
/// the DSF's uniqueness rules.
fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A resource of `t` that passes the DSF's content rules for that type, and whose unique
/// keys (identifier, url and version, address, …) no other resource holds.
fn content_of(t: &str) -> Value {
    let mut resource = content_without_key(t);
    let n = unique();
    match t {
        "ActivityDefinition"
        | "CodeSystem"
        | "Questionnaire"
        | "StructureDefinition"
        | "ValueSet" => resource["version"] = json!(format!("{n}.0")),
        "Endpoint" => {
            resource["identifier"][0]["value"] = json!(format!("matrix-{n}.test"));
            resource["address"] = json!(format!("https://matrix-{n}.test/fhir"));
        }
        "NamingSystem" => resource["name"] = json!(format!("Matrix{n}")),
        "Organization" => resource["identifier"][0]["value"] = json!(format!("matrix-{n}.test")),
        "OrganizationAffiliation" => {
            resource["participatingOrganization"]["reference"] =
                json!(format!("Organization/matrix-member-{n}"));
        }
        "Subscription" => {
            resource["criteria"] = json!(format!("Task?identifier=http://matrix.test|{n}"))
        }
        _ => {}
    }
    resource
}

fn content_without_key(t: &str) -> Value {
    match t {
        "ActivityDefinition" => {
            let mut ad = activity_definition(
                &[dsf_tests::fixtures::party("LOCAL_ALL")],
                &[dsf_tests::fixtures::party("LOCAL_ALL")],
            );
            ad["url"] = json!("http://dsf.dev/bpe/Process/matrix");
            ad
        }
        "Binary" => {
            json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="})
        }
        "Bundle" => json!({"resourceType": "Bundle", "type": "collection"}),
        "CodeSystem" => {
            json!({"resourceType": "CodeSystem", "url": "http://dsf.dev/fhir/CodeSystem/matrix", "version": "1.0", "date": "2026-11-25", "status": "active", "content": "complete"})
        }
        "DocumentReference" => {
            json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"url": "Binary/x"}}]})
        }
        "Endpoint" => endpoint(
            "matrix.test",
            "https://matrix.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
        "Group" => json!({"resourceType": "Group", "type": "person", "actual": false}),
        "Library" => {
            json!({"resourceType": "Library", "status": "active", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]}})
        }
        "Measure" => json!({"resourceType": "Measure", "status": "active"}),
        "MeasureReport" => {
            json!({"resourceType": "MeasureReport", "status": "complete", "type": "summary", "measure": "http://dsf.dev/fhir/Measure/matrix", "period": {"start": "2026-01-01"}})
        }
        "NamingSystem" => {
            json!({"resourceType": "NamingSystem", "name": "Matrix", "status": "active", "kind": "identifier", "date": "2026-11-25", "uniqueId": [{"type": "uri", "value": "http://dsf.dev/sid/matrix"}]})
        }
        "Organization" => organization("matrix.test", "Matrix"),
        "OrganizationAffiliation" => json!({
            "resourceType": "OrganizationAffiliation", "active": true,
            "organization": {"reference": "Organization/matrix-parent"},
            "participatingOrganization": {"reference": "Organization/matrix-member"},
            "endpoint": [{"reference": "Endpoint/x"}],
            "code": [{"coding": [{"system": ROLE_SYSTEM, "code": "HRP"}]}]
        }),
        "Provenance" => {
            json!({"resourceType": "Provenance", "target": [{"reference": "Task/x"}], "recorded": "2026-11-25T10:00:00Z", "agent": [{"who": {"reference": "Organization/x"}}]})
        }
        "Questionnaire" => json!({"resourceType": t,
        "url": "http://dsf.dev/fhir/Questionnaire/matrix", "version": "1.0",
        "date": "2026-11-25", "status": "active",
        "item": [
            {"linkId": "business-key", "type": "string", "required": true,
                "text": "The business-key of the process execution"},
            {"linkId": "user-task-id", "type": "string", "required": true,
                "text": "The user-task-id of the process execution"}
        ]}),
        "ValueSet" => json!({"resourceType": t,
            "url": "http://dsf.dev/fhir/ValueSet/matrix", "version": "1.0",
            "date": "2026-11-25", "status": "active"}),
        "ResearchStudy" => json!({"resourceType": t, "status": "active"}),
        "StructureDefinition" => {
            json!({"resourceType": "StructureDefinition", "url": "http://dsf.dev/fhir/StructureDefinition/matrix", "version": "1.0", "date": "2026-11-25", "name": "Matrix", "status": "active", "kind": "resource", "abstract": false, "type": "Task"})
        }
        "Subscription" => {
            json!({"resourceType": "Subscription", "status": "active", "reason": "matrix", "criteria": "Task?status=requested", "channel": {"type": "websocket", "payload": "application/fhir+json"}})
        }
        _ => json!({"resourceType": t}),
    }
}

fn meta_without_tags(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("tag");
    }
    resource
}

fn task_of(case: TaskCase, requester: Value, suffix: &str) -> Value {
    match case {
        TaskCase::Draft => draft_task(&format!("matrix-{suffix}"), "2026-11-25T10:00:00Z"),
        TaskCase::FromRemote | TaskCase::FromOther => {
            let mut task = ping_task("requested", "2026-11-25T10:00:00Z", REMOTE_ORG);
            task["requester"] = requester;
            task
        }
    }
}

fn response_of(case: ResponseCase) -> Value {
    let mut response = json!({
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://dsf.dev/fhir/Questionnaire/matrix|1.0",
        "status": "in-progress",
        "item": [
            {"linkId": "business-key", "text": "The business-key of the process execution",
                "answer": [{"valueString": "bk-1"}]},
            {"linkId": "user-task-id", "text": "The user-task-id of the process execution",
                "answer": [{"valueString": "ut-1"}]},
            {"linkId": "approve", "text": "Approve?"}
        ]
    });
    if case == ResponseCase::Restricted {
        response["extension"] = json!([{
            "url": QUESTIONNAIRE_AUTHORIZATION,
            "extension": [{"url": "practitioner-role", "valueCoding": {"system": "http://matrix.test/fhir/CodeSystem/practitioner-role", "code": "NOBODY"}}]
        }]);
    }
    response
}

/// The resource a subject is, for seeding it (`requester` only matters for Tasks).
fn subject_resource(subject: Subject, context: &str) -> Value {
    match subject {
        Subject::Tagged(t, tag) => tag.apply(content_of(t)),
        Subject::BinaryInContext(_) => {
            let mut binary = content_of("Binary");
            binary["securityContext"] = json!({"reference": context});
            binary
        }
        Subject::Task(case) => {
            let requester = match case {
                TaskCase::FromOther => OTHER_ORG,
                _ => REMOTE_ORG,
            };
            task_of(
                case,
                json!({"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": requester}}),
                &format!("seeded-{}", unique()),
            )
        }
        Subject::Response(case) => response_of(case),
    }
}

/// What `caller` sends to create a resource of the subject's kind.
fn create_body(subject: Subject, caller: Caller, context: &str, n: usize) -> Value {
    match subject {
        Subject::Task(TaskCase::FromRemote) => {
            task_of(TaskCase::FromRemote, caller.reference(), "")
        }
        Subject::Task(TaskCase::Draft) => {
            task_of(TaskCase::Draft, Value::Null, &format!("created-{n}"))
        }
        _ => subject_resource(subject, context),
    }
}

/// What `caller` sends to update the stored subject: the step the DSF's workflow takes next.
fn update_body(subject: Subject, caller: Caller, stored: &Value) -> Value {
    let mut next = stored.clone();
    match subject {
        Subject::Tagged(_, Tag::Missing) => next = meta_without_tags(next),
        Subject::Tagged(..) | Subject::BinaryInContext(_) => {}
        Subject::Task(TaskCase::Draft) => next["authoredOn"] = json!("2026-11-26T10:00:00Z"),
        Subject::Task(_) => next["status"] = json!("in-progress"),
        Subject::Response(_) => {
            next["status"] = json!("completed");
            next["author"] = match caller {
                Caller::LocalOrganization => {
                    json!({"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": LOCAL_ORG}})
                }
                other => other.reference(),
            };
            next["authored"] = json!("2026-11-25T11:00:00Z");
            next["item"][2]["answer"] = json!([{"valueBoolean": true}]);
        }
    }
    next
}

fn outcome_of(status: u16, body: &Value) -> Option<Outcome> {
    Some(match status {
        201 => Outcome::Created,
        200 => match body["type"].as_str() {
            Some("searchset") => match body["total"].as_i64() {
                Some(1) => Outcome::Hit,
                Some(0) => Outcome::Miss,
                _ => return None,
            },
            _ => Outcome::Ok,
        },
        400 => Outcome::Invalid,
        401 => Outcome::Unauthenticated,
        403 => Outcome::Forbidden,
        404 => Outcome::NotFound,
        _ => return None,
    })
}

/// Organisations, the remote organisation's role and the context the subjects refer to.
async fn prepare(server: &TestServer) {
    server.authorize_ping().await;
    let affiliation = json!({
        "resourceType": "OrganizationAffiliation", "active": true,
        "meta": {"tag": tag_all()},
        "organization": {"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": PARENT_ORG}},
        "participatingOrganization": {"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": REMOTE_ORG}},
        "endpoint": [{"reference": "Endpoint/x"}],
        "code": [{"coding": [{"system": ROLE_SYSTEM, "code": REMOTE_ROLE}]}]
    });
    server
        .seed(vec![
            organization(OTHER_ORG, "Other"),
            organization(PARENT_ORG, "Parent"),
            affiliation,
        ])
        .await;
}

/// Seeds the subject, and the DocumentReference its securityContext names.
async fn seed_subject(
    server: &TestServer,
    subject: Subject,
    copies: usize,
) -> (String, Vec<Value>) {
    let context = match subject {
        Subject::BinaryInContext(tag) => {
            let doc = server
                .seed(vec![tag.apply(content_of("DocumentReference"))])
                .await;
            format!("DocumentReference/{}", doc[0]["id"].as_str().expect("id"))
        }
        _ => String::new(),
    };
    let seeded = server
        .seed(
            (0..copies)
                .map(|_| subject_resource(subject, &context))
                .collect(),
        )
        .await;
    (context, seeded)
}

async fn run_cell(
    server: &TestServer,
    caller: Caller,
    interaction: Interaction,
    subject: Subject,
    context: &str,
    target: &Value,
    n: usize,
) -> (u16, Value) {
    let client = caller.client(server);
    let t = subject.resource_type();
    let id = target["id"].as_str().expect("id");
    match interaction {
        Interaction::Create => {
            let body = create_body(subject, caller, context, n);
            send_json(client, Method::POST, t, Some(&body)).await
        }
        Interaction::Read => send_json(client, Method::GET, &format!("{t}/{id}"), None).await,
        Interaction::Search => send_json(client, Method::GET, &format!("{t}?_id={id}"), None).await,
        Interaction::History => {
            send_json(client, Method::GET, &format!("{t}/{id}/_history"), None).await
        }
        Interaction::Update => {
            let body = update_body(subject, caller, target);
            send_json(client, Method::PUT, &format!("{t}/{id}"), Some(&body)).await
        }
        Interaction::Delete => send_json(client, Method::DELETE, &format!("{t}/{id}"), None).await,
    }
}

async fn every_cell_of_the_matrix(server: TestServer) {
    prepare(&server).await;
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for subject in subjects() {
        // One copy for the reads, a fresh one per caller for each write.
        let (context, seeded) = seed_subject(&server, subject, 1 + 2 * CALLERS.len()).await;
        for (c, caller) in CALLERS.into_iter().enumerate() {
            for interaction in INTERACTIONS {
                let target = match interaction {
                    Interaction::Update => &seeded[1 + c],
                    Interaction::Delete => &seeded[1 + CALLERS.len() + c],
                    _ => &seeded[0],
                };
                let (status, body) = run_cell(
                    &server,
                    caller,
                    interaction,
                    subject,
                    &context,
                    target,
                    cells,
                )
                .await;
                cells += 1;
                let want = expected(caller, interaction, subject);
                let got = outcome_of(status, &body);
                if got != Some(want) {
                    mismatches.push(format!(
                        "{subject:?} {} by {}: expected {}, got {status} {}",
                        interaction.label(),
                        caller.label(),
                        want.label(),
                        body["issue"][0]["diagnostics"].as_str().unwrap_or(""),
                    ));
                }
                if matches!(status, 400 | 401 | 403 | 404) {
                    assert_eq!(
                        body["resourceType"], "OperationOutcome",
                        "{subject:?} {interaction:?} {caller:?}"
                    );
                }
            }
        }
    }
    assert_eq!(cells, subjects().len() * CALLERS.len() * INTERACTIONS.len());
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The matrix as `docs/authorization.md` shows it.
fn render_matrix() -> String {
    let mut out = String::new();
    out.push_str("| resource | read access / state | interaction |");
    for caller in CALLERS {
        let _ = write!(out, " {} |", caller.label());
    }
    out.push_str("\n|---|---|---|");
    for _ in CALLERS {
        out.push_str("---|");
    }
    out.push('\n');
    let mut seen = Vec::new();
    for subject in subjects() {
        let label = subject.row_label();
        if seen.contains(&label) {
            continue;
        }
        seen.push(label.clone());
        for interaction in INTERACTIONS {
            let _ = write!(out, "| {label} | {} |", interaction.label());
            for caller in CALLERS {
                let _ = write!(out, " {} |", expected(caller, interaction, subject).label());
            }
            out.push('\n');
        }
    }
    out
}

fn tagged_types_behave_alike() {
    // The document shows one row set for all tagged types; that is only honest if the
    // rules do not single any of them out.
    for tag in TAGS {
        let first = Subject::Tagged("ActivityDefinition", tag);
        for t in tagged_types() {
            for caller in CALLERS {
                for interaction in INTERACTIONS {
                    assert_eq!(
                        expected(caller, interaction, Subject::Tagged(t, tag)),
                        expected(caller, interaction, first)
                    );
                }
            }
        }
    }
}

fn the_document_shows_the_tested_matrix() {
    const BEGIN: &str =
        "<!-- matrix:begin (generated by tests/tests/authorization_matrix.rs) -->\n";
    const END: &str = "<!-- matrix:end -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/authorization.md");
    let doc = std::fs::read_to_string(path).expect("docs/authorization.md");
    let (head, rest) = doc.split_once(BEGIN).expect("matrix begin marker");
    let (_, tail) = rest.split_once(END).expect("matrix end marker");
    let wanted = format!("{head}{BEGIN}{}{END}{tail}", render_matrix());
    if std::env::var("DSF_BLESS").as_deref() == Ok("1") {
        std::fs::write(path, &wanted).expect("write docs/authorization.md");
    } else {
        assert!(
            doc == wanted,
            "docs/authorization.md does not show the tested matrix; run with DSF_BLESS=1 to rewrite it"
        );
    }
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(suite, every_cell_of_the_matrix);
    let suite = suite.sync_test("tagged_types_behave_alike", tagged_types_behave_alike);
    let suite = suite.sync_test(
        "the_document_shows_the_tested_matrix",
        the_document_shows_the_tested_matrix,
    );
    suite.run()
}

use serde_json::{json, Value};

/// OperationOutcome issue types this server reports (FHIR value set `issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueType {
    /// `invalid`: the content is malformed.
    Invalid,
    /// `not-supported`: the request is not supported.
    NotSupported,
    /// `not-found`: no such resource.
    NotFound,
    /// `deleted`: the resource was deleted.
    Deleted,
    /// `conflict`: a version or precondition conflict.
    Conflict,
    /// `duplicate`: a resource that must be unique exists.
    Duplicate,
    /// `too-costly`: the request is too large.
    TooCostly,
    /// `login`: the caller is not authenticated.
    Login,
    /// `forbidden`: the caller may not do this.
    Forbidden,
    /// `exception`: the server failed.
    Exception,
    /// `informational`: no problem, a note.
    Informational,
    /// `processing`: the content breaks a rule (a profile).
    Processing,
    /// `timeout`: something took too long.
    Timeout,
    /// `transient`: try again later.
    Transient,
}

impl IssueType {
    /// The code as the value set writes it.
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::Conflict => "conflict",
            IssueType::Duplicate => "duplicate",
            IssueType::TooCostly => "too-costly",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Exception => "exception",
            IssueType::Informational => "informational",
            IssueType::Processing => "processing",
            IssueType::Transient => "transient",
            IssueType::Timeout => "timeout",
        }
    }
}

/// A single-issue OperationOutcome as JSON, the form the rest of dsf-fhir handles resources in.
#[derive(Debug, Clone)]
pub struct OperationOutcome {
    severity: &'static str,
    issue_type: IssueType,
    diagnostics: String,
}

impl OperationOutcome {
    /// An error.
    pub fn error(issue_type: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "error",
            issue_type,
            diagnostics: diagnostics.into(),
        }
    }

    /// A note.
    pub fn information(diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "information",
            issue_type: IssueType::Informational,
            diagnostics: diagnostics.into(),
        }
    }

    /// A warning.
    pub fn warning(issue_type: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "warning",
            issue_type,
            diagnostics: diagnostics.into(),
        }
    }

    /// The OperationOutcome resource.
    pub fn to_json(&self) -> Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": self.severity,
                "code": self.issue_type.code(),
                "diagnostics": self.diagnostics,
            }]
        })
    }
}

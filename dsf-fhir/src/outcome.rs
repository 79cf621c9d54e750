use serde_json::{json, Value};

/// OperationOutcome issue types this server reports (FHIR value set `issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueType {
    Invalid,
    NotSupported,
    NotFound,
    Deleted,
    Conflict,
    Duplicate,
    TooCostly,
    Login,
    Forbidden,
    Exception,
    Informational,
    Processing,
    Timeout,
    Transient,
}

impl IssueType {
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
    pub fn error(issue_type: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "error",
            issue_type,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "information",
            issue_type: IssueType::Informational,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn warning(issue_type: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: "warning",
            issue_type,
            diagnostics: diagnostics.into(),
        }
    }

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

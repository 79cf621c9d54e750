//! The roles an identity holds: which interactions it may use, for which resource types.

/// The DSF roles an identity may hold (the Java DSF's `FhirServerRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// `CREATE`.
    Create,
    /// `READ`.
    Read,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `SEARCH`.
    Search,
    /// `HISTORY`.
    History,
    /// `PERMANENT_DELETE`.
    PermanentDelete,
    /// `WEBSOCKET`: may bind Subscriptions over websockets.
    Websocket,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 8] = [
        Role::Create,
        Role::Read,
        Role::Update,
        Role::Delete,
        Role::Search,
        Role::History,
        Role::PermanentDelete,
        Role::Websocket,
    ];

    /// The name as the role configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Create => "CREATE",
            Role::Read => "READ",
            Role::Update => "UPDATE",
            Role::Delete => "DELETE",
            Role::Search => "SEARCH",
            Role::History => "HISTORY",
            Role::PermanentDelete => "PERMANENT_DELETE",
            Role::Websocket => "WEBSOCKET",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name.trim())
    }
}

/// A role, for all resource types or only some (`CREATE: [Task]` in the Java DSF's role
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsfRole {
    /// The role.
    pub role: Role,
    /// Empty for all types.
    pub resource_types: Vec<String>,
}

impl DsfRole {
    /// `role` for all resource types.
    pub fn all(role: Role) -> Self {
        DsfRole {
            role,
            resource_types: Vec::new(),
        }
    }

    /// `role` for `resource_types` only.
    pub fn only(role: Role, resource_types: &[&str]) -> Self {
        DsfRole {
            role,
            resource_types: resource_types.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// `CREATE` or `CREATE:Task,QuestionnaireResponse`.
    pub fn parse(text: &str) -> Option<Self> {
        let (name, types) = text.split_once(':').unwrap_or((text, ""));
        Some(DsfRole {
            role: Role::parse(name)?,
            resource_types: types
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Whether this gives `role` for `resource_type`.
    pub fn grants(&self, role: Role, resource_type: &str) -> bool {
        self.role == role
            && (self.resource_types.is_empty()
                || self.resource_types.iter().any(|t| t == resource_type))
    }
}

//! What a write asks of the store ([`WriteOp`]), what it did ([`WriteOutcome`]), and the
//! [`WriteGuard`] that judges each [`Change`] inside the transaction.

use super::StoredResource;
use crate::search::SearchQuery;
use crate::Result;
use serde_json::Value;

/// One write. `full_url` is the Bundle entry's fullUrl; references to it (`urn:uuid:…`) in
/// later resources of the same transaction are rewritten to the stored `Type/id`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WriteOp {
    /// A create (POST), with a new id.
    Create {
        /// The resource; its type decides where it goes.
        resource: Value,
        /// `If-None-Exist`: when the search matches one resource, that one is the outcome
        /// and nothing is written.
        if_none_exist: Option<SearchQuery>,
        /// The Bundle entry's fullUrl.
        full_url: Option<String>,
    },
    /// An update (PUT) of `resource_type/id`, or its create with that id.
    Update {
        /// The type in the URL.
        resource_type: &'static str,
        /// The id in the URL.
        id: String,
        /// The new content.
        resource: Value,
        /// `If-Match`: the version the writer saw; another current version is a conflict.
        if_match: Option<i64>,
        /// The Bundle entry's fullUrl.
        full_url: Option<String>,
    },
    /// An update of the one resource `query` matches (a create when none does).
    ConditionalUpdate {
        /// The search in the URL.
        query: SearchQuery,
        /// The new content.
        resource: Value,
        /// The Bundle entry's fullUrl.
        full_url: Option<String>,
    },
    /// Creates a Binary whose data is content written ahead ([`super::ContentWriter`]),
    /// not part of `resource`.
    CreateWithContent {
        /// The Binary without `data`.
        resource: Value,
        /// The content written ahead.
        content: super::StagedContent,
    },
    /// A delete of `resource_type/id`: a tombstone version.
    Delete {
        /// The type in the URL.
        resource_type: &'static str,
        /// The id in the URL.
        id: String,
    },
    /// A delete of the one resource `query` matches.
    ConditionalDelete {
        /// The search in the URL.
        query: SearchQuery,
    },
    /// Removes every version of a deleted resource (`$permanent-delete`): afterwards no
    /// version can be read, and its history is gone.
    PermanentDelete {
        /// The type in the URL.
        resource_type: &'static str,
        /// The id in the URL.
        id: String,
    },
}

impl WriteOp {
    /// The type this operation writes (empty if the resource has no valid type).
    pub fn resource_type(&self) -> &str {
        match self {
            WriteOp::Create { resource, .. } | WriteOp::CreateWithContent { resource, .. } => {
                resource
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            }
            WriteOp::Update { resource_type, .. }
            | WriteOp::Delete { resource_type, .. }
            | WriteOp::PermanentDelete { resource_type, .. } => resource_type,
            WriteOp::ConditionalUpdate { query, .. } | WriteOp::ConditionalDelete { query } => {
                query.resource_type
            }
        }
    }
}

/// One change about to be written, as a [`WriteGuard`] sees it.
#[derive(Debug, Clone, Copy)]
/// `index` is the position of the operation in the transaction.
#[non_exhaustive]
pub enum Change<'a> {
    /// A new resource.
    Create {
        /// The operation's position in the transaction.
        index: usize,
        /// The resource's type.
        resource_type: &'a str,
        /// The resource as it will be stored.
        new: &'a Value,
    },
    /// A new version of a resource.
    Update {
        /// The operation's position in the transaction.
        index: usize,
        /// The resource's type.
        resource_type: &'a str,
        /// The version it replaces.
        old: &'a StoredResource,
        /// The new version as it will be stored.
        new: &'a Value,
    },
    /// A deletion.
    Delete {
        /// The operation's position in the transaction.
        index: usize,
        /// The resource's type.
        resource_type: &'a str,
        /// The version it deletes.
        old: &'a StoredResource,
    },
}

/// Judges each change of a transaction inside it, seeing the version a write replaces as it
/// is when the write happens. An error aborts the transaction.
pub trait WriteGuard: Send + Sync {
    /// Allows `change`, or refuses it with the error the transaction fails with.
    fn check(&self, change: Change<'_>) -> Result<()>;

    /// What the writer may read: a conditional reference (`Organization?identifier=…`) in
    /// its resources finds only these. `None`: everything.
    fn read_grants(&self) -> Option<crate::access::ReadGrants> {
        None
    }
}

/// What a [`WriteOp`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// The new resource.
    Created(StoredResource),
    /// A conditional create matched this existing resource; nothing was written.
    Existing(StoredResource),
    /// The new version.
    Updated(StoredResource),
    /// The tombstone version that records the deletion.
    Deleted(StoredResource),
    /// The resource was deleted before; nothing was written.
    AlreadyDeleted(StoredResource),
    /// A conditional delete matched nothing.
    NoMatch,
    /// Every version of the resource was removed; this was its tombstone.
    PermanentlyDeleted(StoredResource),
}

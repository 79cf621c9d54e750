//! SQL text shared by the SQLite and PostgreSQL backends. Both speak the same schema; only
//! placeholders, row locking and a few column types differ.

use crate::access::{grant, ReadGrants};
use crate::search::{Clause, Condition, IndexRow, ParamKind, Prefix, SearchQuery, SortKey};
use std::fmt::Write;

/// The SQL spoken by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A bound parameter. Integers are always 64 bit; every integer column is BIGINT.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// Text; `None` for NULL.
    Text(Option<String>),
    /// An integer; `None` for NULL.
    Int(Option<i64>),
    /// A part of a Binary's content.
    Bytes(Vec<u8>),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(Some(s.to_owned()))
    }
}
impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(Some(s))
    }
}
impl From<i64> for SqlValue {
    fn from(i: i64) -> Self {
        SqlValue::Int(Some(i))
    }
}

/// A statement and its parameters, built with the dialect's placeholders.
#[derive(Debug, Clone)]
pub struct Sql {
    dialect: Dialect,
    /// The statement, with `?n` (SQLite) or `$n` (PostgreSQL) placeholders.
    pub text: String,
    /// The values bound to the placeholders, in order.
    pub params: Vec<SqlValue>,
    /// A lookup of one row by its unique key: its cost is bounded by the index's depth, not
    /// by how much is stored (see [`Sql::is_point_lookup`]).
    point_lookup: bool,
}

impl Sql {
    /// An empty statement in `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        Sql {
            dialect,
            // Enough for a read by id with its read-access check, so that building one
            // does not grow (and copy) either.
            text: String::with_capacity(512),
            params: Vec::with_capacity(8),
            point_lookup: false,
        }
    }

    /// Whether the statement reads one row by its unique key (with per-row checks at most).
    /// A backend whose calls block may run such a statement where it is, since it takes
    /// microseconds whatever the table's size, and move every other one off the async
    /// runtime's threads.
    pub fn is_point_lookup(&self) -> bool {
        self.point_lookup
    }

    /// Appends SQL text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// `(?1, ?2, …)` for each value.
    pub fn bind_list<S: AsRef<str>>(&mut self, values: &[S]) -> &mut Self {
        self.push("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v.as_ref());
        }
        self.push(")")
    }

    /// Binds `value` to the next placeholder, which it appends.
    pub fn bind(&mut self, value: impl Into<SqlValue>) -> &mut Self {
        self.params.push(value.into());
        let n = self.params.len();
        // Written in place: a read by id binds half a dozen values, and a formatted string
        // for each showed up in its profile.
        let mark = match self.dialect {
            Dialect::Sqlite => '?',
            Dialect::Postgres => '$',
        };
        let _ = write!(self.text, "{mark}{n}");
        self
    }
}

pub const RESOURCE_COLUMNS: &str =
    "r.res_type, r.res_id, r.version, r.last_updated, r.deleted, r.body";

pub fn schema(dialect: Dialect) -> String {
    let seq = match dialect {
        // The rowid: rows are never deleted but by permanent delete, so it keeps increasing
        // without AUTOINCREMENT's extra write per insert.
        Dialect::Sqlite => "seq INTEGER PRIMARY KEY",
        Dialect::Postgres => "seq BIGSERIAL PRIMARY KEY",
    };
    // Byte-wise comparison lets `LIKE 'prefix%'` use the indexes (SQLite gets the same from
    // case_sensitive_like, set per connection); stored strings are already lower-cased where
    // search is case-insensitive.
    let text = match dialect {
        Dialect::Sqlite => "TEXT",
        Dialect::Postgres => "TEXT COLLATE \"C\"",
    };
    let bytes = match dialect {
        Dialect::Sqlite => "BLOB",
        Dialect::Postgres => "BYTEA",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS resources (
            {seq},
            res_type TEXT NOT NULL,
            res_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            last_updated BIGINT NOT NULL,
            deleted BIGINT NOT NULL,
            current BIGINT NOT NULL,
            body TEXT,
            UNIQUE (res_type, res_id, version)
        );
        -- The unique index also finds the current version of a resource and serves the
        -- search semi-joins; fewer indexes, fewer pages written per commit.
        CREATE INDEX IF NOT EXISTS resources_updated ON resources (last_updated);
        -- A type's resources in order of change: `_lastUpdated` ranges and sorts (the BPE's
        -- catch-up) read only the rows they return.
        CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (res_type, last_updated);
        CREATE TABLE IF NOT EXISTS search_values (
            res_type TEXT NOT NULL,
            res_id TEXT NOT NULL,
            param TEXT NOT NULL,
            system TEXT,
            value {text},
            norm {text},
            low BIGINT,
            high BIGINT
        );
        -- Partial, so that each predicate has exactly one index that fits, even before the
        -- planner has statistics.
        CREATE INDEX IF NOT EXISTS search_values_value ON search_values (res_type, param, value) WHERE value IS NOT NULL;
        CREATE INDEX IF NOT EXISTS search_values_norm ON search_values (res_type, param, norm) WHERE norm IS NOT NULL;
        CREATE INDEX IF NOT EXISTS search_values_date ON search_values (res_type, param, low) WHERE low IS NOT NULL;
        CREATE INDEX IF NOT EXISTS search_values_resource ON search_values (res_type, res_id);
        -- What each version grants (see crate::access); kept for every version, tombstones
        -- included, so that history is filtered as well as search.
        CREATE TABLE IF NOT EXISTS read_access (
            seq BIGINT NOT NULL,
            res_type TEXT NOT NULL,
            access {text} NOT NULL,
            PRIMARY KEY (seq, access)
        );
        CREATE INDEX IF NOT EXISTS read_access_type ON read_access (res_type, access, seq);
        -- Binary content uploaded raw, in parts (see store::content): the parts under the
        -- content's own id, and which Binary version owns which content.
        CREATE TABLE IF NOT EXISTS binary_parts (
            content_id TEXT NOT NULL,
            part BIGINT NOT NULL,
            written BIGINT NOT NULL,
            bytes {bytes} NOT NULL,
            PRIMARY KEY (content_id, part)
        );
        CREATE TABLE IF NOT EXISTS binary_contents (
            res_id TEXT NOT NULL,
            version BIGINT NOT NULL,
            content_id TEXT NOT NULL UNIQUE,
            size BIGINT NOT NULL,
            PRIMARY KEY (res_id, version)
        );
        -- The version of these tables (see STORE_SCHEMA_VERSION).
        CREATE TABLE IF NOT EXISTS store_schema (version BIGINT NOT NULL);
        INSERT INTO store_schema (version)
            SELECT {STORE_SCHEMA_VERSION} WHERE NOT EXISTS (SELECT 1 FROM store_schema);"
    )
}

/// The version of the store's tables this build creates and reads. A database a newer build
/// moved further is refused rather than misread; when the tables change, this goes up and the
/// step from the version before is added where the backends create the schema.
pub const STORE_SCHEMA_VERSION: i64 = 1;

/// The statement that reads a database's store schema version.
pub(super) const STORE_SCHEMA_QUERY: &str = "SELECT MAX(version) FROM store_schema";

/// Whether this build can use a store at schema `version`.
pub(super) fn check_store_schema(version: i64) -> crate::Result<()> {
    if version > STORE_SCHEMA_VERSION {
        return Err(crate::Error::storage_fault(format!(
            "the database's store tables are at schema version {version}, written by a newer server; this server knows versions up to {STORE_SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn date_eq(sql: &mut Sql, low: i64, high: i64) {
    sql.push("(s.low >= ")
        .bind(low)
        .push(" AND s.high <= ")
        .bind(high)
        .push(")");
}

fn condition(sql: &mut Sql, c: &Condition) {
    match c {
        Condition::Token { system, code } => {
            let mut parts = 0;
            sql.push("(");
            match system {
                None => {}
                Some(None) => {
                    sql.push("s.system IS NULL");
                    parts += 1;
                }
                Some(Some(system)) => {
                    sql.push("s.system = ").bind(system.as_str());
                    parts += 1;
                }
            }
            if let Some(code) = code {
                if parts > 0 {
                    sql.push(" AND ");
                }
                sql.push("s.value = ").bind(code.as_str());
                parts += 1;
            }
            if parts == 0 {
                sql.push("1 = 1");
            }
            sql.push(")");
        }
        Condition::StartsWith(prefix) => {
            sql.push("s.norm LIKE ")
                .bind(format!("{}%", like_escape(prefix)))
                .push(" ESCAPE '\\'");
        }
        Condition::Contains(part) => {
            sql.push("s.norm LIKE ")
                .bind(format!("%{}%", like_escape(part)))
                .push(" ESCAPE '\\'");
        }
        Condition::Equals(value) => {
            sql.push("s.value = ").bind(value.as_str());
        }
        Condition::Below(prefix) => {
            sql.push("s.value LIKE ")
                .bind(format!("{}%", like_escape(prefix)))
                .push(" ESCAPE '\\'");
        }
        Condition::Canonical { url, version } => match version {
            Some(v) => {
                sql.push("s.value = ").bind(format!("{url}|{v}"));
            }
            None => {
                sql.push("(s.value = ")
                    .bind(url.as_str())
                    .push(" OR s.value LIKE ")
                    .bind(format!("{}|%", like_escape(url)))
                    .push(" ESCAPE '\\')");
            }
        },
        Condition::Date { prefix, range } => {
            let (low, high) = (range.low, range.high);
            match prefix {
                Prefix::Eq => date_eq(sql, low, high),
                Prefix::Ne => {
                    sql.push("NOT ");
                    date_eq(sql, low, high);
                }
                Prefix::Gt => {
                    sql.push("s.high > ").bind(high);
                }
                Prefix::Lt => {
                    sql.push("s.low < ").bind(low);
                }
                Prefix::Ge => {
                    sql.push("(s.high > ").bind(high).push(" OR ");
                    date_eq(sql, low, high);
                    sql.push(")");
                }
                Prefix::Le => {
                    sql.push("(s.low < ").bind(low).push(" OR ");
                    date_eq(sql, low, high);
                    sql.push(")");
                }
            }
        }
    }
}

/// `_lastUpdated` on the resource row's own column, which the `(res_type, last_updated)`
/// index orders: the BPE's catch-up (`_lastUpdated=gt…&_sort=_lastUpdated`) then reads only
/// the rows after the instant, however many are stored. The column holds the instant `t` in
/// milliseconds, whose index row is the range `[t, t+1)`; each comparison below is the one
/// [`condition`] makes on that range, solved for `t`.
fn last_updated_clause(sql: &mut Sql, clause: &Clause) {
    sql.push(if clause.negate {
        " AND NOT ("
    } else {
        " AND ("
    });
    for (i, c) in clause.any_of.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        let Condition::Date { prefix, range } = c else {
            continue;
        };
        let (low, high) = (range.low, range.high);
        match prefix {
            Prefix::Eq => {
                sql.push("(r.last_updated >= ")
                    .bind(low)
                    .push(" AND r.last_updated < ")
                    .bind(high)
                    .push(")");
            }
            Prefix::Ne => {
                sql.push("(r.last_updated < ")
                    .bind(low)
                    .push(" OR r.last_updated >= ")
                    .bind(high)
                    .push(")");
            }
            Prefix::Gt => {
                sql.push("r.last_updated >= ").bind(high);
            }
            Prefix::Lt => {
                sql.push("r.last_updated < ").bind(low);
            }
            Prefix::Ge => {
                sql.push("r.last_updated >= ").bind(low);
            }
            Prefix::Le => {
                sql.push("r.last_updated < ").bind(high);
            }
        }
    }
    sql.push(")");
}

fn clause(sql: &mut Sql, resource_type: &str, clause: &Clause) {
    if clause.param == "_id" {
        let ids: Vec<&str> = clause
            .any_of
            .iter()
            .filter_map(|c| match c {
                Condition::Equals(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        sql.push(" AND r.res_id IN ").bind_list(&ids);
        return;
    }
    if clause.param == "_lastUpdated"
        && clause
            .any_of
            .iter()
            .all(|c| matches!(c, Condition::Date { .. }))
    {
        last_updated_clause(sql, clause);
        return;
    }
    // An uncorrelated semi-join: the planner drives it from the search_values index instead
    // of probing for every current resource of the type.
    sql.push(if clause.negate {
        " AND r.res_id NOT IN"
    } else {
        " AND r.res_id IN"
    });
    sql.push(" (SELECT s.res_id FROM search_values s WHERE s.res_type = ")
        .bind(resource_type)
        .push(" AND s.param = ")
        .bind(clause.param.as_str())
        .push(" AND (");
    for (i, c) in clause.any_of.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        condition(sql, c);
    }
    sql.push("))");
}

/// `FROM resources r WHERE <current, not deleted, the query's clauses>`.
fn search_from(sql: &mut Sql, query: &SearchQuery, plan: AccessPlan) {
    sql.push(" FROM resources r WHERE r.res_type = ")
        .bind(query.resource_type)
        .push(" AND r.current = 1 AND r.deleted = 0");
    for c in &query.clauses {
        clause(sql, query.resource_type, c);
    }
    if let Some(grants) = &query.visible_to {
        visible(sql, grants, Some(query.resource_type), plan);
    }
}

/// How a read-access filter meets the rows it filters (see the store's `plan` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessPlan {
    /// Collect the versions the caller may read and drive the query from them.
    FromGrants,
    /// Probe the grant rows of each candidate.
    PerRow,
}

/// How many versions of `resource_type` are readable with `grants`, counted up to `limit`.
pub fn readable_up_to(
    dialect: Dialect,
    resource_type: &str,
    grants: &ReadGrants,
    limit: i64,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM (SELECT 1 FROM read_access a WHERE a.res_type = ")
        .bind(resource_type)
        .push(" AND a.access IN ")
        .bind_list(grants.as_slice())
        .push(" LIMIT ")
        .bind(limit)
        .push(") x");
    sql
}

/// How many current resources match the query's own criteria, counted up to `limit`.
pub fn candidates_up_to(dialect: Dialect, query: &SearchQuery, limit: i64) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM (SELECT 1");
    let mut unfiltered = query.clone();
    unfiltered.visible_to = None;
    search_from(&mut sql, &unfiltered, AccessPlan::PerRow);
    sql.push(" LIMIT ").bind(limit).push(") x");
    sql
}

/// `AND <the version r is readable with grants>`.
pub(crate) fn visible(
    sql: &mut Sql,
    grants: &ReadGrants,
    resource_type: Option<&str>,
    plan: AccessPlan,
) {
    let grants = grants.as_slice();
    if grants.is_empty() {
        sql.push(" AND 1 = 0");
        return;
    }
    match (resource_type, plan) {
        (Some(t), AccessPlan::FromGrants) => {
            sql.push(" AND (r.seq IN (SELECT a.seq FROM read_access a WHERE a.res_type = ")
                .bind(t)
                .push(" AND a.access IN ")
                .bind_list(grants)
                .push(")");
        }
        _ => {
            sql.push(" AND (EXISTS (SELECT 1 FROM read_access a WHERE a.seq = r.seq AND ");
            grant_among(sql, "a", grants);
            sql.push(")");
        }
    }
    if resource_type.is_none() || resource_type == Some("Binary") {
        // A Binary with a securityContext is readable when the context's current version
        // is; its `CONTEXT|Type/id` grant names the context.
        let start = grant::CONTEXT_PREFIX.len() + 1;
        let (context_type, context_id) = match sql.dialect {
            Dialect::Sqlite => (
                format!("substr(c.access, {start}, instr(substr(c.access, {start}), '/') - 1)"),
                format!("substr(c.access, {start} + instr(substr(c.access, {start}), '/'))"),
            ),
            Dialect::Postgres => (
                format!("split_part(substr(c.access, {start}), '/', 1)"),
                format!("split_part(substr(c.access, {start}), '/', 2)"),
            ),
        };
        sql.push(" OR EXISTS (SELECT 1 FROM read_access c JOIN resources x ON x.res_type = ")
            .push(&context_type)
            .push(" AND x.res_id = ")
            .push(&context_id)
            .push(
                " AND x.current = 1 AND x.deleted = 0 WHERE c.seq = r.seq AND substr(c.access, 1, ",
            )
            .push(&grant::CONTEXT_PREFIX.len().to_string())
            .push(") = ")
            .bind(grant::CONTEXT_PREFIX)
            .push(" AND EXISTS (SELECT 1 FROM read_access b WHERE b.seq = x.seq AND ");
        grant_among(sql, "b", grants);
        sql.push("))");
    }
    sql.push(")");
}

/// `<alias>.access` is one of `grants`, tested on the few grant rows of one version.
fn grant_among(sql: &mut Sql, alias: &str, grants: &[String]) {
    match sql.dialect {
        // The unary plus keeps SQLite from seeking the primary key once per grant; a chain
        // of comparisons rather than `IN (…)`, for which SQLite would build (and free) a
        // temporary b-tree of the list on every execution: with the list, that was most of
        // the cost of a read by id (docs/performance.md).
        Dialect::Sqlite => {
            sql.push("(");
            for (i, g) in grants.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("+")
                    .push(alias)
                    .push(".access = ")
                    .bind(g.as_str());
            }
            sql.push(")");
        }
        Dialect::Postgres => {
            sql.push(alias).push(".access IN ").bind_list(grants);
        }
    }
}

/// Whether one version is readable with `grants`.
pub fn version_visible(
    dialect: Dialect,
    resource_type: &str,
    id: &str,
    version: i64,
    grants: &ReadGrants,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM resources r WHERE r.res_type = ")
        .bind(resource_type)
        .push(" AND r.res_id = ")
        .bind(id)
        .push(" AND r.version = ")
        .bind(version);
    visible(&mut sql, grants, Some(resource_type), AccessPlan::PerRow);
    sql
}

/// Records what one stored version grants (callers skip it when empty).
pub fn insert_grants(
    dialect: Dialect,
    resource_type: &str,
    id: &str,
    version: i64,
    grants: &[String],
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO read_access (seq, res_type, access) SELECT r.seq, r.res_type, g.access FROM resources r CROSS JOIN (");
    for (i, g) in grants.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT CAST(")
            .bind(g.as_str())
            .push(" AS TEXT) AS access");
    }
    sql.push(") g WHERE r.res_type = ")
        .bind(resource_type)
        .push(" AND r.res_id = ")
        .bind(id)
        .push(" AND r.version = ")
        .bind(version);
    sql
}

/// Gives a tombstone the grants of the version it deletes, so that the deletion shows in
/// the history of exactly those who could read the resource.
pub fn copy_grants(dialect: Dialect, resource_type: &str, id: &str, from: i64, to: i64) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO read_access (seq, res_type, access) SELECT n.seq, a.res_type, a.access FROM resources n, resources o, read_access a WHERE n.res_type = ")
        .bind(resource_type)
        .push(" AND n.res_id = ")
        .bind(id)
        .push(" AND n.version = ")
        .bind(to)
        .push(" AND o.res_type = n.res_type AND o.res_id = n.res_id AND o.version = ")
        .bind(from)
        .push(" AND a.seq = o.seq");
    sql
}

pub fn search_count(dialect: Dialect, query: &SearchQuery, plan: AccessPlan) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*)");
    search_from(&mut sql, query, plan);
    sql
}

/// One page of matches, ordered by `_sort` and then by last change, so that paging is stable.
///
/// With `few_matches` (the total is known to be small), `_lastUpdated` is sorted as an
/// expression: the database then finds the few matches by their criteria and sorts them,
/// instead of walking every resource of the type newest first in the `last_updated` index
/// until a page of matches turns up (37 ms for the 20 newest requested Tasks among 100,000
/// mostly completed ones).
pub fn search_page(
    dialect: Dialect,
    query: &SearchQuery,
    plan: AccessPlan,
    limit: usize,
    offset: usize,
    few_matches: bool,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ").push(RESOURCE_COLUMNS);
    search_from(&mut sql, query, plan);
    sql.push(" ORDER BY ");
    for sort in &query.sort {
        match &sort.key {
            SortKey::Id => {
                sql.push("r.res_id");
            }
            SortKey::LastUpdated if few_matches => {
                sql.push("(r.last_updated + 0)");
            }
            SortKey::LastUpdated => {
                sql.push("r.last_updated");
            }
            SortKey::Param(name, kind) => {
                let (agg, column) = match (sort.descending, kind) {
                    (false, ParamKind::Date) => ("MIN", "low"),
                    (true, ParamKind::Date) => ("MAX", "high"),
                    (false, ParamKind::String) => ("MIN", "norm"),
                    (true, ParamKind::String) => ("MAX", "norm"),
                    (false, _) => ("MIN", "value"),
                    (true, _) => ("MAX", "value"),
                };
                sql.push(&format!("(SELECT {agg}(s.{column}) FROM search_values s WHERE s.res_type = r.res_type AND s.res_id = r.res_id AND s.param = "))
                    .bind(name.as_str())
                    .push(")");
            }
        }
        sql.push(if sort.descending { " DESC, " } else { " ASC, " });
    }
    sql.push("r.seq ASC LIMIT ")
        .bind(limit as i64)
        .push(" OFFSET ")
        .bind(offset as i64);
    sql
}

/// The current version of `Type/id` (which may be a deletion), if `visible_to` is given only
/// when readable with those grants.
pub fn current_row(
    dialect: Dialect,
    resource_type: &str,
    id: &str,
    visible_to: Option<&ReadGrants>,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.point_lookup = true;
    sql.push("SELECT ")
        .push(RESOURCE_COLUMNS)
        .push(" FROM resources r WHERE r.res_type = ")
        .bind(resource_type)
        .push(" AND r.res_id = ")
        .bind(id)
        .push(" AND r.current = 1");
    if let Some(grants) = visible_to {
        visible(&mut sql, grants, Some(resource_type), AccessPlan::PerRow);
    }
    // The current version is the newest: walking the unique index from the newest version
    // stops at the first row, where `current` alone would fetch the row of every version.
    sql.push(" ORDER BY r.version DESC LIMIT 1");
    sql
}

pub fn version_row(dialect: Dialect, resource_type: &str, id: &str, version: i64) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.point_lookup = true;
    sql.push("SELECT ")
        .push(RESOURCE_COLUMNS)
        .push(" FROM resources r WHERE r.res_type = ")
        .bind(resource_type)
        .push(" AND r.res_id = ")
        .bind(id)
        .push(" AND r.version = ")
        .bind(version);
    sql
}

/// Current, not deleted resources by type and id, for `_include`.
pub fn current_by_ids(
    dialect: Dialect,
    resource_type: &str,
    ids: &[String],
    visible_to: Option<&ReadGrants>,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ")
        .push(RESOURCE_COLUMNS)
        .push(" FROM resources r WHERE r.res_type = ")
        .bind(resource_type)
        .push(" AND r.current = 1 AND r.deleted = 0 AND r.res_id IN ");
    sql.bind_list(ids);
    if let Some(grants) = visible_to {
        visible(&mut sql, grants, Some(resource_type), AccessPlan::PerRow);
    }
    sql
}

/// The reference values `param` of the given resources hold, for `_include`.
pub fn reference_values(dialect: Dialect, resource_type: &str, param: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT DISTINCT s.value FROM search_values s WHERE s.res_type = ")
        .bind(resource_type)
        .push(" AND s.param = ")
        .bind(param)
        .push(" AND s.value IS NOT NULL AND s.res_id IN ");
    sql.bind_list(ids);
    sql
}

/// Current resources of `source_type` whose `param` references one of `targets`, for
/// `_revinclude`.
pub fn referencing(
    dialect: Dialect,
    source_type: &str,
    param: &str,
    targets: &[String],
    visible_to: Option<&ReadGrants>,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ")
        .push(RESOURCE_COLUMNS)
        .push(" FROM resources r WHERE r.res_type = ")
        .bind(source_type)
        .push(" AND r.current = 1 AND r.deleted = 0 AND EXISTS (SELECT 1 FROM search_values s WHERE s.res_type = r.res_type AND s.res_id = r.res_id AND s.param = ")
        .bind(param)
        .push(" AND s.value IN ")
        .bind_list(targets)
        .push(")");
    if let Some(grants) = visible_to {
        visible(&mut sql, grants, Some(source_type), AccessPlan::PerRow);
    }
    sql
}

/// Clears `current` on `version`, the version a new one replaces: found by its key, not by
/// reading every version's row.
pub fn retire_version(dialect: Dialect, resource_type: &str, id: &str, version: i64) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE resources SET current = 0 WHERE res_type = ")
        .bind(resource_type)
        .push(" AND res_id = ")
        .bind(id)
        .push(" AND version = ")
        .bind(version);
    sql
}

pub fn insert_version(
    dialect: Dialect,
    resource_type: &str,
    id: &str,
    version: i64,
    last_updated: i64,
    body: Option<String>,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, current, body) VALUES (")
        .bind(resource_type)
        .push(", ")
        .bind(id)
        .push(", ")
        .bind(version)
        .push(", ")
        .bind(last_updated)
        .push(", ")
        .bind(i64::from(body.is_none()))
        .push(", 1, ")
        .bind(SqlValue::Text(body))
        .push(")");
    sql
}

/// Removes every version of a resource (permanent delete).
pub fn purge_versions(dialect: Dialect, resource_type: &str, id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM resources WHERE res_type = ")
        .bind(resource_type)
        .push(" AND res_id = ")
        .bind(id);
    sql
}

/// Removes what every version of a resource granted; before [`purge_versions`], which
/// removes the rows these are found by.
pub fn purge_grants(dialect: Dialect, resource_type: &str, id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM read_access WHERE seq IN (SELECT seq FROM resources WHERE res_type = ")
        .bind(resource_type)
        .push(" AND res_id = ")
        .bind(id)
        .push(")");
    sql
}

pub fn delete_index(dialect: Dialect, resource_type: &str, id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM search_values WHERE res_type = ")
        .bind(resource_type)
        .push(" AND res_id = ")
        .bind(id);
    sql
}

/// One multi-row INSERT for all index rows of a resource (callers skip it when empty).
pub fn insert_index(dialect: Dialect, resource_type: &str, id: &str, rows: &[IndexRow]) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO search_values (res_type, res_id, param, system, value, norm, low, high) VALUES ");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push("(")
            .bind(resource_type)
            .push(", ")
            .bind(id)
            .push(", ")
            .bind(row.param.as_str())
            .push(", ")
            .bind(SqlValue::Text(row.system.clone()))
            .push(", ")
            .bind(SqlValue::Text(row.value.clone()))
            .push(", ")
            .bind(SqlValue::Text(row.norm.clone()))
            .push(", ")
            .bind(SqlValue::Int(row.low))
            .push(", ")
            .bind(SqlValue::Int(row.high))
            .push(")");
    }
    sql
}

/// Which versions a history request covers.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// Only versions of this type.
    pub resource_type: Option<String>,
    /// Only versions of this resource (with `resource_type`).
    pub id: Option<String>,
    /// Versions changed at or after this instant (ms).
    pub since: Option<i64>,
    /// Versions current at these instants (ms); several `_at` values must all hold.
    pub at: Vec<i64>,
    /// Only versions readable with these grants; `None` for all.
    pub visible_to: Option<ReadGrants>,
}

fn history_from(sql: &mut Sql, filter: &HistoryFilter, plan: AccessPlan) {
    sql.push(" FROM resources r WHERE 1 = 1");
    if let Some(t) = &filter.resource_type {
        sql.push(" AND r.res_type = ").bind(t.as_str());
    }
    if let Some(id) = &filter.id {
        sql.push(" AND r.res_id = ").bind(id.as_str());
    }
    if let Some(since) = filter.since {
        sql.push(" AND r.last_updated >= ").bind(since);
    }
    for at in &filter.at {
        sql.push(" AND r.last_updated <= ")
            .bind(*at)
            .push(" AND NOT EXISTS (SELECT 1 FROM resources n WHERE n.res_type = r.res_type AND n.res_id = r.res_id AND n.version > r.version AND n.last_updated <= ")
            .bind(*at)
            .push(")");
    }
    if let Some(grants) = &filter.visible_to {
        visible(sql, grants, filter.resource_type.as_deref(), plan);
    }
}

pub fn history_count(dialect: Dialect, filter: &HistoryFilter, plan: AccessPlan) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*)");
    history_from(&mut sql, filter, plan);
    sql
}

/// Newest change first.
pub fn history_page(
    dialect: Dialect,
    filter: &HistoryFilter,
    plan: AccessPlan,
    limit: usize,
    offset: usize,
) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ").push(RESOURCE_COLUMNS);
    history_from(&mut sql, filter, plan);
    sql.push(" ORDER BY r.seq DESC LIMIT ")
        .bind(limit as i64)
        .push(" OFFSET ")
        .bind(offset as i64);
    sql
}

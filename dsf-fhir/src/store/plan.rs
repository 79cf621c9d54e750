//! Choosing how a read-access filter joins a query.
//!
//! A filtered query can be driven from the rows the caller may read ([`AccessPlan::FromGrants`])
//! or check each row the query's own criteria select ([`AccessPlan::PerRow`]). Whichever set is
//! smaller wins: a remote organisation that may read 1% of 100,000 Tasks lists all its Tasks
//! faster from its grants, while a search by identifier, or any search by an organisation that
//! may read nearly everything, is faster row by row. Both sets are counted only up to
//! [`FEW_READABLE`], and the readable count is cached briefly per type and grants, since the
//! same callers search the same types again and again.

use super::sql::{self, AccessPlan, Dialect};
use super::Session;
use crate::access::ReadGrants;
use crate::search::SearchQuery;
use crate::Result;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many readable versions, collecting them costs more than probing the candidates
/// of a typical search.
pub const FEW_READABLE: i64 = 2_000;

/// How long a readable count is trusted. It only steers the plan, never the result.
const ESTIMATE_TTL: Duration = Duration::from_secs(2);
const ESTIMATE_CAPACITY: usize = 4_096;

#[derive(Default)]
pub(crate) struct PlanCache {
    readable: Mutex<HashMap<(String, ReadGrants), (i64, Instant)>>,
}

impl PlanCache {
    async fn readable(
        &self,
        session: &mut dyn Session,
        dialect: Dialect,
        resource_type: &str,
        grants: &ReadGrants,
    ) -> Result<i64> {
        let key = (resource_type.to_owned(), grants.clone());
        if let Some((count, at)) = self.lock().get(&key) {
            if at.elapsed() < ESTIMATE_TTL {
                return Ok(*count);
            }
        }
        let count = session
            .count(&sql::readable_up_to(
                dialect,
                resource_type,
                grants,
                FEW_READABLE,
            ))
            .await?;
        let mut cache = self.lock();
        if cache.len() >= ESTIMATE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, (count, Instant::now()));
        Ok(count)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ReadGrants), (i64, Instant)>> {
        self.readable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan for a search.
    pub(crate) async fn for_search(
        &self,
        session: &mut dyn Session,
        dialect: Dialect,
        query: &SearchQuery,
    ) -> Result<AccessPlan> {
        let Some(grants) = &query.visible_to else {
            return Ok(AccessPlan::PerRow);
        };
        if grants.as_slice().is_empty() {
            return Ok(AccessPlan::PerRow);
        }
        let readable = self
            .readable(session, dialect, query.resource_type, grants)
            .await?;
        if readable >= FEW_READABLE {
            return Ok(AccessPlan::PerRow);
        }
        // Only whether the query selects fewer rows than the caller may read matters.
        let candidates = session
            .count(&sql::candidates_up_to(dialect, query, readable + 1))
            .await?;
        Ok(if candidates > readable {
            AccessPlan::FromGrants
        } else {
            AccessPlan::PerRow
        })
    }

    /// The plan for a history of one type (all its resources).
    pub(crate) async fn for_type_history(
        &self,
        session: &mut dyn Session,
        dialect: Dialect,
        resource_type: &str,
        grants: &ReadGrants,
    ) -> Result<AccessPlan> {
        if grants.as_slice().is_empty() {
            return Ok(AccessPlan::PerRow);
        }
        let readable = self
            .readable(session, dialect, resource_type, grants)
            .await?;
        Ok(if readable < FEW_READABLE {
            AccessPlan::FromGrants
        } else {
            AccessPlan::PerRow
        })
    }
}

//! Search results page by page, following the searchset Bundle's `next` links.

use super::FhirClient;
use crate::Result;
use serde_json::Value;
use std::collections::VecDeque;

/// The matches of one search, fetched a page at a time as they are consumed.
pub struct SearchPages {
    client: FhirClient,
    /// Path of the next page to fetch; `None` after the last.
    next: Option<String>,
    buffered: VecDeque<Value>,
    total: Option<u64>,
}

impl SearchPages {
    pub(super) fn new(client: FhirClient, first: String) -> Self {
        SearchPages {
            client,
            next: Some(first),
            buffered: VecDeque::new(),
            total: None,
        }
    }

    /// The next page's Bundle, or `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Value>> {
        let Some(path) = self.next.take() else {
            return Ok(None);
        };
        let bundle = self.client.get_bundle(&path).await?;
        self.total = bundle.get("total").and_then(Value::as_u64);
        self.next = bundle
            .get("link")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|link| link.get("relation").and_then(Value::as_str) == Some("next"))
            .and_then(|link| link.get("url").and_then(Value::as_str))
            .map(|url| self.client.relative(url).to_owned())
            // A server repeating the page it just sent would keep us here forever.
            .filter(|next| *next != path);
        Ok(Some(bundle))
    }

    /// The next match (entries with `search.mode` `match`; includes are skipped), or `None`
    /// when all pages are read.
    pub async fn next(&mut self) -> Result<Option<Value>> {
        loop {
            if let Some(resource) = self.buffered.pop_front() {
                return Ok(Some(resource));
            }
            let Some(bundle) = self.next_page().await? else {
                return Ok(None);
            };
            self.buffered.extend(matches(&bundle));
        }
    }

    /// Every remaining match.
    pub async fn collect(mut self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        while let Some(resource) = self.next().await? {
            all.push(resource);
        }
        Ok(all)
    }

    /// `Bundle.total` of the last page read.
    pub fn total(&self) -> Option<u64> {
        self.total
    }
}

/// The resources of a searchset's match entries.
pub(crate) fn matches(bundle: &Value) -> Vec<Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entry| {
            entry
                .pointer("/search/mode")
                .and_then(Value::as_str)
                .is_none_or(|mode| mode == "match")
        })
        .filter_map(|entry| entry.get("resource").cloned())
        .collect()
}

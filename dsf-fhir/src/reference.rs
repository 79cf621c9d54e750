//! References as the store keeps and compares them.

/// Makes a reference relative (`Type/id`) when it points at this server, and drops any
/// `/_history/n` suffix, so that stored and searched references compare equal.
pub fn normalise_reference(reference: &str, base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let relative = reference
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(reference);
    match relative.find("/_history/") {
        Some(pos) => relative[..pos].to_owned(),
        None => relative.to_owned(),
    }
}

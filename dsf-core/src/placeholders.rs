//! Placeholders in configuration files, as the Java DSF fills them from its Spring
//! properties: `${dev.dsf.x}` (or `#{…}` in BPMN) takes the value of the property, which an
//! operator sets as the environment variable `DEV_DSF_X`; `${dev.dsf.x:default}` falls back to
//! `default`. The FHIR server fills its init bundle this way, the BPE its plugins' files.

use crate::{Error, Result};

/// The environment variable of a property name, as Spring reads properties from the
/// environment: `dev.dsf.bpe.ping-pong.timeout` is `DEV_DSF_BPE_PING_PONG_TIMEOUT`; a name
/// already in that form stays as it is.
pub fn environment_variable(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Replaces every placeholder opened by one of `openers` (`"${"`, `"#{"`) and closed by `}`
/// with `value(name)`, or else its default. A placeholder with neither is an
/// [`Error::Placeholder`] naming it and its environment variable. An opener without a
/// closing brace is left as it is.
pub fn fill_placeholders(
    text: &str,
    openers: &[&str],
    value: &dyn Fn(&str) -> Option<String>,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, opener)) = openers
        .iter()
        .filter_map(|o| rest.find(o).map(|at| (at, *o)))
        .min_by_key(|(at, _)| *at)
    {
        out.push_str(&rest[..start]);
        let after = &rest[start + opener.len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let placeholder = &after[..end];
        let (name, default) = match placeholder.split_once(':') {
            Some((name, default)) => (name.trim(), Some(default)),
            None => (placeholder.trim(), None),
        };
        let filled = value(name)
            .or_else(|| default.map(str::to_owned))
            .ok_or_else(|| Error::Placeholder {
                name: format!("{opener}{name}}}"),
                variable: environment_variable(name),
            })?;
        out.push_str(&filled);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_defaults_and_errors() {
        let value = |name: &str| (name == "dev.dsf.set").then(|| "v".to_owned());
        assert_eq!(
            fill_placeholders(
                "a ${dev.dsf.set} b ${dev.dsf.unset:d} c #{dev.dsf.set} ${open",
                &["${"],
                &value
            )
            .expect("filled"),
            "a v b d c #{dev.dsf.set} ${open"
        );
        let error = fill_placeholders("${dev.dsf.no-such}", &["${", "#{"], &value)
            .expect_err("unresolved")
            .to_string();
        assert!(error.contains("DEV_DSF_NO_SUCH"), "{error}");
        assert_eq!(environment_variable("dev.dsf.a-b.c"), "DEV_DSF_A_B_C");
    }
}

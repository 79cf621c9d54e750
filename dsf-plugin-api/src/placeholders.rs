use crate::Error;

/// Fills the DSF placeholders of a plugin file as the Java BPE does before parsing it:
/// `#{version}`, `#{date}` and `#{organization}` from the arguments, any other `#{a.b-c}`
/// from the environment variable `A_B_C` (looked up with `env`); an unresolvable one is an
/// error naming the file. `${…}` (BPMN expressions) is left alone.
pub fn fill_placeholders(
    file: &str,
    text: &str,
    version: &str,
    date: &str,
    organization: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("#{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match name {
            "version" => out.push_str(version),
            "date" => out.push_str(date),
            "organization" => out.push_str(organization),
            _ => {
                let variable: String = name
                    .chars()
                    .map(|c| match c {
                        '.' | '-' => '_',
                        c => c.to_ascii_uppercase(),
                    })
                    .collect();
                let value = env(&variable).ok_or_else(|| Error::Placeholder {
                    file: file.to_owned(),
                    name: name.to_owned(),
                    variable,
                })?;
                out.push_str(&value);
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_known_and_environment_placeholders() {
        let text = "v=#{version} d=#{date} o=#{organization} m=#{dev.dsf.mail-to} e=${x}";
        let filled = fill_placeholders("f", text, "1.0", "2026-01-02", "org.test", |v| {
            (v == "DEV_DSF_MAIL_TO").then(|| "a@b".to_owned())
        })
        .unwrap();
        assert_eq!(filled, "v=1.0 d=2026-01-02 o=org.test m=a@b e=${x}");
    }

    #[test]
    fn unresolvable_placeholder_names_file_and_variable() {
        let error = fill_placeholders("bpe/x.bpmn", "#{no.such}", "1.0", "d", "o", |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("bpe/x.bpmn") && error.contains("NO_SUCH"),
            "{error}"
        );
    }

    #[test]
    fn unclosed_placeholder_is_kept() {
        let filled = fill_placeholders("f", "a #{version", "1.0", "d", "o", |_| None).unwrap();
        assert_eq!(filled, "a #{version");
    }
}

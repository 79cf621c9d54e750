use crate::Error;

/// Fills the DSF placeholders of a plugin's BPMN file as the Java BPE does before parsing it:
/// `#{version}`, `#{date}` and `#{organization}` from the arguments, any other `#{a.b-c}` from
/// the environment variable `A_B_C` (looked up with `env`), or `#{a.b-c:default}` with a
/// default; an unresolvable one is an error naming the file. `${…}` (BPMN expressions) is left
/// alone.
pub fn fill_placeholders(
    file: &str,
    text: &str,
    version: &str,
    date: &str,
    organization: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    fill(file, text, &["#{"], version, date, organization, &env)
}

/// Fills the placeholders of a plugin's FHIR resource file: as [`fill_placeholders`], and
/// `${a.b-c}` / `${a.b-c:default}` from the environment as well (a FHIR resource holds no
/// BPMN expressions; the Java BPE resolves both forms in them).
pub fn fill_resource_placeholders(
    file: &str,
    text: &str,
    version: &str,
    date: &str,
    organization: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    fill(file, text, &["#{", "${"], version, date, organization, &env)
}

fn fill(
    file: &str,
    text: &str,
    openers: &[&str],
    version: &str,
    date: &str,
    organization: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    let value = |name: &str| match name {
        "version" => Some(version.to_owned()),
        "date" => Some(date.to_owned()),
        "organization" => Some(organization.to_owned()),
        name => env(&environment_variable(name)),
    };
    dsf_core::fill_placeholders(text, openers, &value).map_err(|e| match e {
        dsf_core::Error::Placeholder { name, variable } => Error::Placeholder {
            file: file.to_owned(),
            name,
            variable,
        },
        other => Error::Placeholder {
            file: file.to_owned(),
            name: other.to_string(),
            variable: String::new(),
        },
    })
}

pub use dsf_core::environment_variable;

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
    fn defaults_and_resource_expressions() {
        let env = |v: &str| (v == "DEV_DSF_SET").then(|| "set".to_owned());
        let bpmn = "#{dev.dsf.unset:fallback} #{dev.dsf.set:x} ${keep}";
        assert_eq!(
            fill_placeholders("f", bpmn, "1.0", "d", "o", env).unwrap(),
            "fallback set ${keep}"
        );
        let resource =
            "${dev.dsf.bpe.allow.list.organization:hs-heilbronn.de} ${dev.dsf.set} #{version}";
        assert_eq!(
            fill_resource_placeholders("f", resource, "1.0", "d", "o", env).unwrap(),
            "hs-heilbronn.de set 1.0"
        );
        assert!(fill_resource_placeholders("f", "${no.such}", "1.0", "d", "o", env).is_err());
        assert_eq!(
            environment_variable("dev.dsf.bpe.ping-pong.timeout"),
            "DEV_DSF_BPE_PING_PONG_TIMEOUT"
        );
        assert_eq!(environment_variable("DEV_DSF_X"), "DEV_DSF_X");
    }

    #[test]
    fn unclosed_placeholder_is_kept() {
        let filled = fill_placeholders("f", "a #{version", "1.0", "d", "o", |_| None).unwrap();
        assert_eq!(filled, "a #{version");
    }
}

//! Build secrets (`archfarm build --secret id=ID,src=FILE`): values a `RUN
//! --mount=type=secret,id=ID` step reads from `/run/secrets/ID`, which never enter the image, a
//! log, the job as shown, or the database after the job ends.
//!
//! The value travels in the job submission and in the lease of each of the job's builds, and
//! nowhere else; its `Debug` is [`Secret`]'s, so a tracing line that prints a job or a lease
//! shows `Secret(***)`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::{MAX_SECRETS, MAX_SECRETS_TOTAL_BYTES, MAX_SECRET_BYTES, MAX_SECRET_ID_BYTES};
use crate::Secret;

/// One build secret: its id, as `RUN --mount=type=secret,id=ID` names it, and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSecret {
    /// The id, checked by [`check_id`].
    pub id: String,
    /// The value (UTF-8 text, at most [`MAX_SECRET_BYTES`]).
    #[serde(serialize_with = "expose", deserialize_with = "wrap")]
    pub value: Secret,
}

fn expose<S: Serializer>(value: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.expose())
}

fn wrap<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    // Not `Secret::from_str`: an empty secret file is legal, as with BuildKit.
    String::deserialize(d).map(Secret::new)
}

/// Checks an id: 1 to [`MAX_SECRET_ID_BYTES`] of `A-Z a-z 0-9 _ - .`, not only dots. It becomes
/// a file name (`/run/secrets/ID`) and a field of buildah's `--secret id=ID,src=PATH`, so a `/`,
/// a `,` or a `=` must never get through.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SECRET_ID_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !id.chars().all(|c| c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret id '{id}' must be 1 to {MAX_SECRET_ID_BYTES} of A-Z a-z 0-9 _ - . (and not \
             only dots), e.g. id=npm_token"
        ))
    }
}

/// Checks a job's secrets: each id, no id twice, each value within [`MAX_SECRET_BYTES`], all
/// within [`MAX_SECRETS_TOTAL_BYTES`] as JSON, at most [`MAX_SECRETS`]. Messages name the id, never the value.
pub fn check_all(secrets: &[BuildSecret]) -> Result<(), String> {
    if secrets.len() > MAX_SECRETS {
        return Err(format!("at most {MAX_SECRETS} secrets per job"));
    }
    let mut total = 0;
    for (i, s) in secrets.iter().enumerate() {
        check_id(&s.id)?;
        // As the value travels: JSON escaping can make a control character six bytes.
        total += serde_json::to_string(s.value.expose()).map_or(0, |j| j.len());
        if total > MAX_SECRETS_TOTAL_BYTES {
            return Err(format!(
                "the secrets take more than {MAX_SECRETS_TOTAL_BYTES} bytes (768 KiB) together in \
                 the job's submission, which is at most 1 MiB; pass fewer or smaller secrets"
            ));
        }
        if secrets[..i].iter().any(|o| o.id == s.id) {
            return Err(format!("secret id '{}' is given twice", s.id));
        }
        let len = s.value.expose().len();
        if len > MAX_SECRET_BYTES {
            return Err(format!(
                "secret '{}' is {len} bytes; at most {MAX_SECRET_BYTES} (500 KiB) per secret",
                s.id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(id: &str, value: &str) -> BuildSecret {
        BuildSecret {
            id: id.into(),
            value: Secret::new(value),
        }
    }

    #[test]
    fn debug_hides_the_value_and_json_carries_it() {
        let s = secret("tok", "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"id":"tok","value":"hunter2"}"#);
        assert_eq!(serde_json::from_str::<BuildSecret>(&json).unwrap(), s);
        let empty: BuildSecret = serde_json::from_str(r#"{"id":"e","value":""}"#).unwrap();
        assert_eq!(empty.value.expose(), "");
    }

    #[test]
    fn ids_and_limits() {
        for good in ["tok", "NPM_TOKEN", "a.b-c_1", ".hidden"] {
            assert_eq!(check_id(good), Ok(()), "{good}");
        }
        let long = "x".repeat(MAX_SECRET_ID_BYTES + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a,src=/etc",
            "a=b",
            "é",
            " x",
            long.as_str(),
        ] {
            let e = check_id(bad).unwrap_err();
            assert!(e.contains("A-Z a-z 0-9 _ - ."), "{bad}: {e}");
        }
        assert_eq!(check_all(&[secret("a", "1"), secret("b", "2")]), Ok(()));
        let e = check_all(&[secret("a", "1"), secret("a", "2")]).unwrap_err();
        assert!(e.contains("'a' is given twice"), "{e}");
        let big = "v".repeat(MAX_SECRET_BYTES + 1);
        let e = check_all(&[secret("big", &big)]).unwrap_err();
        assert!(
            e.contains("'big' is 512001 bytes") && !e.contains("vvv"),
            "{e}"
        );
        assert_eq!(check_all(&[secret("max", &big[1..])]), Ok(()));
        let many: Vec<_> = (0..=MAX_SECRETS)
            .map(|i| secret(&format!("s{i}"), "v"))
            .collect();
        assert!(check_all(&many).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn secrets_together_fit_in_a_submission() {
        let big = "x".repeat(400 * 1024);
        let two = [secret("a", &big), secret("b", &big)];
        assert!(check_all(&two).is_err_and(|e| e.contains("768 KiB") && !e.contains("xxx")));
        assert!(check_all(&two[..1]).is_ok());
        // Escaped as it travels: 200 Ki control characters are 1.2 MiB of JSON.
        let controls = "\u{1}".repeat(200 * 1024);
        assert!(check_all(&[secret("c", &controls)]).is_err());
    }
}

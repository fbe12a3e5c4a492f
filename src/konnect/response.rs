//! Turning a raw HTTP reply into a typed value or a [`KonnectError`], leniently and without echoing secrets.
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::error::KonnectError;
use super::models::Problem;

/// A reply as read off the wire (the body fully read).
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Parsed `Retry-After`, if any.
    pub retry_after: Option<Duration>,
}

// Hand-written: the body of a token create carries the value.
impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decodes a 2xx body.
    pub fn json<T: DeserializeOwned>(&self, operation: &str) -> Result<T, KonnectError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // serde_json quotes offending values: scrub anything that looks like a token.
            KonnectError::Decode(redact_tokens(&format!(
                "{operation}: status {} body does not match the expected shape: {e}",
                self.status
            )))
        })
    }

    /// The error for a non-2xx reply.
    pub fn error(&self) -> KonnectError {
        error_from_body(
            self.status,
            &self.content_type,
            &self.body,
            self.retry_after,
        )
    }
}

/// Maps a non-2xx status and body to a [`KonnectError`]: problem+json when it is that, Kong's
/// `{"message": ...}` on a gateway 429, and a short, scrubbed excerpt for anything else (an HTML page of a proxy).
pub fn error_from_body(
    status: u16,
    content_type: &str,
    body: &[u8],
    retry_after: Option<Duration>,
) -> KonnectError {
    let mut problem = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => p,
        Err(_) => Problem {
            detail: non_json_detail(content_type, body),
            ..Problem::default()
        },
    };
    if problem.title.is_empty() {
        problem.title = reason(status).to_string();
    }
    problem.detail = redact_tokens(&problem.detail);
    problem.title = redact_tokens(&problem.title);
    problem.message = problem.message.map(|m| redact_tokens(&m));
    if let Some(params) = problem.invalid_parameters.as_mut() {
        for p in params {
            p.reason = redact_tokens(&p.reason);
        }
    }
    KonnectError::from_status(status, problem, retry_after)
}

fn non_json_detail(content_type: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>()
        .trim()
        .to_string();
    let ct = if content_type.is_empty() {
        "no content type"
    } else {
        content_type
    };
    if excerpt.is_empty() {
        format!("empty body ({ct})")
    } else {
        format!("non-JSON body ({ct}): {excerpt}")
    }
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown status")
}

/// Replaces anything shaped like a Konnect token (`kpat_...`, `spat_...`) with `<redacted>`.
pub fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = ["kpat_", "spat_"].iter().filter_map(|p| rest.find(p)).min() {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 5..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        out.push_str("<redacted>");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, ct: &str, body: &str, ra: Option<Duration>) -> KonnectError {
        error_from_body(status, ct, body.as_bytes(), ra)
    }

    #[test]
    fn problem_json_maps_by_status() {
        let body = r#"{"status":409,"title":"Conflict","instance":"konnect:trace:1","detail":"name already exists"}"#;
        match err(409, "application/problem+json", body, None) {
            KonnectError::Conflict { detail, instance } => {
                assert_eq!(detail, "name already exists");
                assert_eq!(instance, "konnect:trace:1");
            }
            e => panic!("{e:?}"),
        }
        let e = err(
            404,
            "application/problem+json",
            r#"{"status":404.0,"title":"Not Found","instance":"i","detail":"no such account"}"#,
            None,
        );
        assert!(e.is_not_found(), "{e:?}");
        assert!(
            matches!(err(401, "", r#"{"title":"Unauthenticated","detail":"A valid token is required"}"#, None), KonnectError::Unauthorized { detail } if detail == "A valid token is required")
        );
        assert!(matches!(
            err(403, "", r#"{"detail":"Permission denied"}"#, None),
            KonnectError::Forbidden { .. }
        ));
        assert!(matches!(
            err(503, "", r#"{"detail":"down"}"#, None),
            KonnectError::Server { status: 503, .. }
        ));
    }

    #[test]
    fn bad_request_keeps_invalid_parameters() {
        let body = r#"{"status":400,"title":"Bad Request","instance":"i","detail":"Invalid request",
            "invalid_parameters":[{"field":"expires_at","reason":"must be in the future","rule":"min"}]}"#;
        let e = err(400, "application/problem+json", body, None);
        match &e {
            KonnectError::BadRequest {
                invalid_parameters, ..
            } => {
                assert_eq!(invalid_parameters.len(), 1);
                assert_eq!(invalid_parameters[0].field, "expires_at");
            }
            e => panic!("{e:?}"),
        }
        assert!(
            e.to_string().contains("expires_at: must be in the future"),
            "{e}"
        );
    }

    #[test]
    fn kong_rate_limit_body_and_retry_after() {
        let e = err(
            429,
            "application/json; charset=utf-8",
            r#"{"message":"API rate limit exceeded"}"#,
            Some(Duration::from_secs(77)),
        );
        assert!(
            matches!(e, KonnectError::RateLimited { retry_after } if retry_after == Duration::from_secs(77))
        );
        let e = err(429, "text/plain", "slow down", None);
        assert!(
            matches!(e, KonnectError::RateLimited { retry_after } if retry_after == Duration::from_secs(15))
        );
    }

    #[test]
    fn non_json_body_gives_a_clear_error() {
        let e = err(
            502,
            "text/html",
            "<html><body>502 Bad Gateway</body></html>\n",
            None,
        );
        let msg = e.to_string();
        assert!(matches!(e, KonnectError::Server { status: 502, .. }));
        assert!(
            msg.contains("non-JSON body (text/html)") && msg.contains("502 Bad Gateway"),
            "{msg}"
        );
        let e = err(500, "", "", None);
        assert!(e.to_string().contains("empty body"), "{e}");
        // A JSON body without problem fields still names the status.
        let e = err(404, "application/json", "{}", None);
        assert!(e.to_string().contains("Not Found"), "{e}");
    }

    #[test]
    fn tokens_in_error_bodies_are_scrubbed() {
        let e = err(
            400,
            "text/plain",
            "bad token spat_abcDEF123_x-y in body",
            None,
        );
        let msg = e.to_string();
        assert!(
            !msg.contains("spat_abc") && msg.contains("<redacted> in body"),
            "{msg}"
        );
        let e = err(409, "", r#"{"detail":"token kpat_zzz exists"}"#, None);
        assert!(!e.to_string().contains("kpat_zzz"));
        assert_eq!(
            redact_tokens("a spat_1 b kpat_2"),
            "a <redacted> b <redacted>"
        );
        assert_eq!(redact_tokens("nothing"), "nothing");
    }

    #[test]
    fn decode_errors_are_scrubbed() {
        let reply = Reply {
            status: 201,
            content_type: "application/json".into(),
            body: br#"{"id":1,"token":"spat_secret"}"#.to_vec(),
            retry_after: None,
        };
        let e = reply
            .json::<std::collections::BTreeMap<String, String>>("op")
            .unwrap_err();
        assert!(matches!(e, KonnectError::Decode(_)));
        assert!(!format!("{e} {e:?} {reply:?}").contains("spat_secret"));
    }
}

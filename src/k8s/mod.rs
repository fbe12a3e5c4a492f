//! Kubernetes-side effects: conditions, status writes, the token Secret, Events, rollout restarts.
pub mod conditions;
pub mod events;
pub mod restart;
pub mod secret;
pub mod status;

/// `text` cut to at most `max` bytes on a character boundary, with an ellipsis when cut (Event notes and
/// condition messages have length limits the API server enforces).
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MORE: &str = "...";
    let mut end = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

/// What the API server said, in one short sentence: its Status message and code for a refusal, never the
/// Debug dump of the Status (kube's own Display of an API error embeds one).
pub fn error_summary(e: &kube::Error) -> String {
    let text = match e {
        kube::Error::Api(s) => {
            let message = if s.message.is_empty() {
                "no message"
            } else {
                s.message.as_str()
            };
            if s.reason.is_empty() {
                format!("{message} (HTTP {})", s.code)
            } else {
                format!("{message} (HTTP {} {})", s.code, s.reason)
            }
        }
        other => other.to_string(),
    };
    clip(&text, 400)
}

/// The HTTP status of an API server answer, when there was one.
pub fn error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// A refusal that repeating the same request will not change (bad input, a forbidden or invalid write):
/// any 4xx but 404 (gone), 409 (stale copy) and 429 (too many requests).
pub fn is_refusal(e: &kube::Error) -> bool {
    error_code(e).is_some_and(|c| (400..500).contains(&c) && ![404, 409, 429].contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(600);
        let cut = clip(&long, 1024);
        assert!(cut.len() <= 1024 && cut.ends_with("..."), "{}", cut.len());
    }

    #[test]
    fn summary_is_the_status_message_not_its_debug_dump() {
        let status = kube::core::Status::failure(
            "Secret \"s\" is invalid: metadata.labels: Invalid value: \"bad key\"",
            "Invalid",
        )
        .with_code(422);
        let e = kube::Error::Api(Box::new(status));
        let s = error_summary(&e);
        assert!(s.starts_with("Secret \"s\" is invalid"), "{s}");
        assert!(s.ends_with("(HTTP 422 Invalid)"), "{s}");
        assert!(!s.contains("Status {"), "{s}");
        assert!(is_refusal(&e));
    }
}

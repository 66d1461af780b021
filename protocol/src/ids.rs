//! Rules both ends apply to what a snapshot names: the id alphabet and the floor of a limit.
//!
//! Ids travel in upstream headers, logs and metrics, so they are kept to a plain, header-safe
//! alphabet that needs no escaping anywhere.

/// What [`check_id`] says of a bad id, for both ends' error messages.
pub const ID_RULE: &str = "1 to 128 characters of A-Z a-z 0-9 _ - . :";

/// Whether `id` is 1–128 characters of `A-Z a-z 0-9 _ - . :`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// A workspace's limit override, when present, must allow at least one request: a limit of 0
/// would lock the workspace out, which is what revoking its keys is for.
pub fn valid_limit(limit: Option<u32>) -> bool {
    limit != Some(0)
}

/// What both ends say of a limit of 0.
pub const LIMIT_RULE: &str = "limits must be at least 1; remove the field to use the default";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_to_a_header_safe_alphabet() {
        for good in ["ws_1", "key-2.a:b", "A", &"x".repeat(128)] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", "ws 1", "ws/1", "ws\n", "é", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_limit_override_must_allow_a_request() {
        assert!(valid_limit(None));
        assert!(valid_limit(Some(1)));
        assert!(!valid_limit(Some(0)));
    }
}

//! Bearer tokens (`Authorization: Bearer <token>`), as the HTTP ingest
//! sources and the admin entity API check them.

use crate::config::Secret;

/// Whether `given` (an `Authorization` header's value) carries `expected`
/// as a bearer token; `true` when no token is expected. Compares in constant
/// time for tokens of equal length.
pub fn authorized(expected: Option<&Secret>, given: Option<&[u8]>) -> bool {
    let Some(expected) = expected else { return true };
    let Some(given) = given.and_then(|g| g.strip_prefix(b"Bearer ")) else { return false };
    let want = expected.expose().as_bytes();
    want.len() == given.len() && want.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let s = Secret::new("s3cret");
        type Case<'a> = (Option<&'a Secret>, Option<&'a [u8]>, bool);
        let table: [Case; 7] = [
            (None, None, true),
            (None, Some(b"Bearer anything"), true),
            (Some(&s), None, false),
            (Some(&s), Some(b"Bearer s3cret"), true),
            (Some(&s), Some(b"Bearer s3cre"), false),
            (Some(&s), Some(b"bearer s3cret"), false),
            (Some(&s), Some(b"Basic s3cret"), false),
        ];
        for (want, given, ok) in table {
            assert_eq!(authorized(want, given), ok, "{given:?}");
        }
    }
}

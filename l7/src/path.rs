//! HTTP path patterns: ids collapsed to `{id}` for low-cardinality labels.

/// Maximum length of a pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 128;

/// Turns a raw request target into a pattern:
///
/// - drops the scheme and authority of an absolute-form target (`http://h/x` -> `/x`), the
///   query string and the fragment;
/// - replaces id-like segments with `{id}`: all digits; UUIDs; hex strings of 8 or more
///   characters containing a digit; base64/base64url-like tokens longer than 16 characters
///   containing a digit, unless they read as a lower-case slug of short words separated by
///   `-` or `_` (`release-notes-2024-v2` stays);
/// - keeps words, empty segments and a trailing slash;
/// - truncates the result to [`MAX_PATTERN_LEN`] bytes (at a character boundary).
///
/// `/users/123/orders/9f8e7d6c-1111-2222-3333-444455556666?x=1` -> `/users/{id}/orders/{id}`.
pub fn path_pattern(path: &str) -> String {
    let mut p = path;
    for scheme in ["http://", "https://", "ws://", "wss://", "grpc://"] {
        if p.len() >= scheme.len()
            && p.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            let rest = p.get(scheme.len()..).unwrap_or("");
            p = rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/");
            break;
        }
    }
    if let Some(i) = p.find(['?', '#']) {
        p = p.get(..i).unwrap_or("");
    }
    if p.is_empty() {
        return "/".to_string();
    }
    let mut out = String::with_capacity(p.len().min(MAX_PATTERN_LEN));
    for (i, seg) in p.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
        if out.len() > MAX_PATTERN_LEN {
            break;
        }
    }
    truncate(&mut out, MAX_PATTERN_LEN);
    out
}

fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    if b.len() > 16
        && digits >= 1
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'='))
    {
        // A lower-case slug such as "release-2024-notes-v2-final" is words, not a token.
        let sep = |c: &u8| *c == b'-' || *c == b'_';
        let slug = !b.iter().any(u8::is_ascii_uppercase)
            && b.iter().any(sep)
            && b.split(sep).all(|part| part.len() <= 12);
        return !slug;
    }
    false
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

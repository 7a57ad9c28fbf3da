//! Shell-style globs (feature `std`): `*` matches any run of characters (also none), `?`
//! exactly one; every other character matches itself. No escapes, no classes.
//!
//! Interface names are matched as they are ([`glob_match`]: Linux link names are
//! case-sensitive); service names and protocols in the topology ignore case
//! ([`glob_match_ignore_case`]).

/// Whether `text` matches `pattern`, case-sensitively.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches(&p, &t)
}

/// Whether `text` matches `pattern`, ignoring case (Unicode lower case of both).
pub fn glob_match_ignore_case(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    matches(&p, &t)
}

/// Greedy match with one backtrack point (the last `*`): linear in practice, never
/// exponential.
fn matches(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it has consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((s, consumed)) = star {
            // Let the `*` take one more character and retry after it.
            star = Some((s, consumed + 1));
            pi = s + 1;
            ti = consumed + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_patterns() {
        assert!(glob_match("*", "wl-web"));
        assert!(glob_match("wl-*", "wl-web"));
        assert!(!glob_match("wl-*", "up0"));
        assert!(glob_match("t?p*", "tap12"));
        assert!(!glob_match("wl-?", "wl-ab"));
        assert!(glob_match("*-web", "wl-web"));
        assert!(
            !glob_match("wl-*", "WL-web"),
            "link names are case-sensitive"
        );
    }

    #[test]
    fn stars_and_question_marks() {
        let m = glob_match_ignore_case;
        assert!(m("*.example.com", "api.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(m("pay-*", "PAY-api"));
        assert!(m("db?", "db1"));
        assert!(!m("db?", "db12"));
        assert!(m("*", ""));
        assert!(!m("?", ""));
        assert!(m("", "") && !m("", "a"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("a**c", "abc"));
        assert!(m("exact", "exact"));
        assert!(m("ÄPI-*", "äpi-1"), "Unicode case");
    }
}

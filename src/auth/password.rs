//! App passwords as people see them: generated from the OS random source, shown once as
//! four groups of four letters, and accepted back with or without spaces, in any case.

use rand::rngs::OsRng;
use rand::Rng;

use super::Secret;

/// Letters in an app password: 26^16 ≈ 2^75 possibilities.
pub const LENGTH: usize = 16;

/// A new app password in display form, `abcd efgh ijkl mnop`.
pub fn generate() -> Secret<String> {
    let mut rng = OsRng;
    let mut shown = String::with_capacity(LENGTH + 3);
    for i in 0..LENGTH {
        if i > 0 && i % 4 == 0 {
            shown.push(' ');
        }
        shown.push(char::from(b'a' + rng.gen_range(0..26u8)));
    }
    Secret::new(shown)
}

/// The canonical form that is hashed and looked up: spaces removed, lowercase. `None`
/// when the input cannot be an app password (wrong length or characters); the caller
/// still spends one hash on it so that the answer takes the same time.
pub fn normalize(typed: &str) -> Option<Secret<String>> {
    let canonical: String = typed
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let well_formed =
        canonical.len() == LENGTH && canonical.bytes().all(|b| b.is_ascii_lowercase());
    well_formed.then(|| Secret::new(canonical))
}

/// The canonical form of a login name: trimmed and lowercased.
pub fn normalize_login(login: &str) -> String {
    login.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_four_groups_of_four_letters() {
        let shown = generate();
        let groups: Vec<&str> = shown.expose().split(' ').collect();
        assert_eq!(groups.len(), 4);
        assert!(groups
            .iter()
            .all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_lowercase())));
        assert_ne!(generate(), shown, "two draws should differ");
    }

    #[test]
    fn retyped_forms_normalize_to_the_same_password() {
        let canonical = normalize("abcd efgh ijkl mnop").unwrap();
        assert_eq!(canonical.expose(), "abcdefghijklmnop");
        for typed in [
            "abcdefghijklmnop",
            "ABCD EFGH IJKL MNOP",
            " abcd  efgh\tijkl mnop ",
        ] {
            assert_eq!(normalize(typed), Some(canonical.clone()), "{typed}");
        }
    }

    #[test]
    fn anything_else_is_not_an_app_password() {
        for typed in [
            "",
            "abcd",
            "abcd efgh ijkl mnopq",
            "abcd efgh ijkl mno1",
            "ábcd efgh ijkl mnop",
        ] {
            assert_eq!(normalize(typed), None, "{typed}");
        }
    }
}

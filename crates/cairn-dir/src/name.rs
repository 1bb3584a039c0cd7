//! Entry names: what a directory accepts.

use crate::DirError;

/// The longest name, in bytes (as in most file systems).
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` can be an entry name: 1 to [`MAX_NAME_LEN`] bytes, no `/`, no NUL, and
/// not `.` or `..`.
pub fn check_name(name: &str) -> Result<(), DirError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_LEN {
        "is longer than 255 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name == "." || name == ".." {
        "is '.' or '..'"
    } else {
        return Ok(());
    };
    Err(DirError::BadName {
        name: name
            .chars()
            .take(64)
            .collect::<String>()
            .replace('\0', "\\0"),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "photo 1.jpg",
            "ünïcødé",
            ".hidden",
            "...",
            &"x".repeat(255),
        ] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a\0b",
            &"x".repeat(256),
            &"é".repeat(128),
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid name"), "{err}");
        }
    }
}

//! Where a service's output can be read, and its last lines. Below the backends: each says
//! where its services write, and attach mode records it for other processes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a service's output can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// A file (native backend).
    File(PathBuf),
    /// A container's output (container backend).
    Container(String),
}

/// The last `n` lines of a file (none when it cannot be read).
pub fn file_tail(path: &Path, n: usize) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), n),
        Err(_) => Vec::new(),
    }
}

/// The last `n` lines of a text.
pub fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_the_newest_in_order() {
        assert_eq!(last_lines("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(last_lines("a\nb", 5), ["a", "b"]);
        assert!(last_lines("a\nb", 0).is_empty());
        assert!(file_tail(Path::new("/nonexistent/harness.log"), 3).is_empty());
    }
}

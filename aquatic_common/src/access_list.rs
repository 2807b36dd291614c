//! Allow and deny lists of info hashes.
//!
//! The file holds one info hash a line as 40 hexadecimal characters; blank
//! lines and lines starting with `#` are ignored. The runtime loads it at
//! start (a bad file is a start-up error) and again on SIGUSR1 (a bad file
//! keeps the old list), then hands every executor a read-only copy.

use std::path::Path;

use hashbrown::HashSet;
use serde::{Deserialize, Serialize};

use crate::InfoHash;

/// How the access list is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessListMode {
    /// Every info hash is served; the file is not read.
    #[default]
    Off,
    /// Only listed info hashes are served.
    Allow,
    /// Listed info hashes are refused.
    Deny,
}

/// Why an access list file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessListError {
    /// The file could not be read.
    #[error("cannot read access list {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not an info hash.
    #[error("access list line {line}: expected 40 hexadecimal characters, found {found:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The offending text (cut to 60 characters).
        found: String,
    },
}

/// A set of info hashes and the mode that says what they mean.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    mode: AccessListMode,
    hashes: HashSet<InfoHash>,
}

impl AccessList {
    /// A list that lets everything through.
    pub fn off() -> Self {
        Self::default()
    }

    /// Parses the text of an access list file.
    pub fn parse(mode: AccessListMode, text: &str) -> Result<Self, AccessListError> {
        let mut hashes = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hash = InfoHash::from_hex(line).map_err(|_| AccessListError::BadLine {
                line: i + 1,
                found: line.chars().take(60).collect(),
            })?;
            hashes.insert(hash);
        }
        Ok(Self { mode, hashes })
    }

    /// Reads and parses a file; with mode `off` the file is not read.
    pub fn load(mode: AccessListMode, path: &Path) -> Result<Self, AccessListError> {
        if mode == AccessListMode::Off {
            return Ok(Self::off());
        }
        let text = std::fs::read_to_string(path).map_err(|source| AccessListError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(mode, &text)
    }

    /// Whether requests for `info_hash` are served.
    #[inline]
    pub fn allows(&self, info_hash: &InfoHash) -> bool {
        match self.mode {
            AccessListMode::Off => true,
            AccessListMode::Allow => self.hashes.contains(info_hash),
            AccessListMode::Deny => !self.hashes.contains(info_hash),
        }
    }

    /// Number of listed hashes.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// No hash listed.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn modes() {
        let text = format!("# comment\n\n  {A}  \n");
        let h = InfoHash::from_hex(A).expect("valid");
        let other = InfoHash([9; 20]);
        let allow = AccessList::parse(AccessListMode::Allow, &text).expect("parses");
        assert_eq!(allow.len(), 1);
        assert!(allow.allows(&h) && !allow.allows(&other));
        let deny = AccessList::parse(AccessListMode::Deny, &text).expect("parses");
        assert!(!deny.allows(&h) && deny.allows(&other));
        assert!(AccessList::off().allows(&h));
    }

    #[test]
    fn errors_name_the_line() {
        let err = AccessList::parse(AccessListMode::Allow, &format!("{A}\n# x\nnot-a-hash\n"))
            .expect_err("bad line");
        assert!(matches!(err, AccessListError::BadLine { line: 3, .. }));
        assert!(err.to_string().contains("line 3"));
    }

    #[test]
    fn off_does_not_read_the_file() {
        assert!(AccessList::load(AccessListMode::Off, Path::new("/nonexistent")).is_ok());
        assert!(matches!(
            AccessList::load(AccessListMode::Allow, Path::new("/nonexistent")),
            Err(AccessListError::Read { .. })
        ));
    }
}

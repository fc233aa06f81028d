//! Secrets (passwords, keys): a wrapper that never prints its value, and where a secret came from,
//! so a job can find it again without ever storing it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A secret value. `Debug` and `Display` show `********`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// Where a secret was found; recorded in the job so `verify` and `status` can find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// In the URL given on the command line: not recoverable from the job.
    Url,
    /// In an environment variable of this name.
    Env(String),
    /// In this file (first line).
    File(PathBuf),
    /// In Tutor's config.yml under this key.
    Tutor(String),
    /// No password.
    None,
}

/// Read a secret from a file: the first line, without its line ending.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Secret> {
    let text = std::fs::read_to_string(path)?;
    Ok(Secret::new(text.lines().next().unwrap_or("").to_string()))
}

//! The credentials in force, following their files: when the tokens file or the JWKS file
//! changes on disk (a rotated Kubernetes Secret, an edited tokens file, an identity provider's new
//! signing key) the server loads them again without a restart.
//!
//! The files are read and hashed every `auth_reload_interval`; a change is loaded whole with
//! [`Authenticator::load`] and swapped in atomically, so a request sees either the old
//! credentials or the new ones, never a mix. A change that does not load (a half-written file, a
//! typo) leaves the previous credentials in force: it is logged with the file's own error and
//! counted, once per distinct content, and the next good version is picked up as usual.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::auth::{AuthConfig, AuthConfigError, AuthError, Authenticator, Principal};

/// What one look at the files found.
#[derive(Debug)]
pub enum Refresh {
    /// The files are as last seen.
    Unchanged,
    /// They changed and the new credentials are in force.
    Reloaded,
    /// They changed but do not load; the previous credentials stay in force.
    Refused(AuthConfigError),
}

pub struct Credentials {
    config: AuthConfig,
    current: RwLock<Arc<Authenticator>>,
    /// Digest of the files' contents at the last load attempt, good or bad.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("current", &*self.current())
            .finish()
    }
}

impl Credentials {
    /// Loads the configured files; at start a file that does not load stops the server.
    pub fn load(config: AuthConfig) -> Result<Credentials, AuthConfigError> {
        let seen = digest(&config.files());
        let auth = Authenticator::load(&config)?;
        Ok(Credentials {
            config,
            current: RwLock::new(Arc::new(auth)),
            seen: Mutex::new(seen),
        })
    }

    /// The authenticator in force now.
    pub fn current(&self) -> Arc<Authenticator> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The principal behind the request's `Authorization` header, by the credentials in force.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        self.current().authenticate(headers)
    }

    /// Looks at the files and loads them again if their contents changed. Blocking file I/O:
    /// call it off the async workers.
    pub fn refresh(&self) -> Refresh {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = digest(&self.config.files());
        if now == *seen {
            return Refresh::Unchanged;
        }
        *seen = now;
        match Authenticator::load(&self.config) {
            Ok(auth) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
                Refresh::Reloaded
            }
            Err(e) => Refresh::Refused(e),
        }
    }
}

impl AuthConfig {
    fn files(&self) -> Vec<PathBuf> {
        self.tokens_file
            .iter()
            .chain(self.jwks_file.iter())
            .cloned()
            .collect()
    }
}

/// One digest over every file's contents; an unreadable file hashes as its error, so a file that
/// disappears and comes back counts as two changes.
fn digest(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in files {
        match std::fs::read(path) {
            Ok(bytes) => {
                h.update(b"ok");
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) => {
                h.update(b"err");
                h.update(e.kind().to_string().as_bytes());
            }
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tokens(path: &std::path::Path, token: &str) {
        std::fs::write(
            path,
            format!("tokens:\n  - subject: ops\n    token: {token}\n    scopes: [runs:read]\n"),
        )
        .unwrap();
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_changed_file_replaces_the_credentials_and_a_broken_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let (old, new) = (
            "test-only-rotated-token-0001",
            "test-only-rotated-token-0002",
        );
        write_tokens(&path, old);
        let creds = Credentials::load(AuthConfig {
            tokens_file: Some(path.clone()),
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(creds.authenticate(&bearer(old)).is_ok());
        assert!(matches!(creds.refresh(), Refresh::Unchanged));

        write_tokens(&path, new);
        assert!(matches!(creds.refresh(), Refresh::Reloaded));
        assert!(matches!(
            creds.authenticate(&bearer(old)),
            Err(AuthError::UnknownToken)
        ));
        assert!(creds.authenticate(&bearer(new)).is_ok());

        // A broken edit is refused once, with the file's own error, and changes nothing.
        std::fs::write(&path, "tokens: [").unwrap();
        match creds.refresh() {
            Refresh::Refused(e) => assert!(e.to_string().contains("tokens.yaml"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(creds.refresh(), Refresh::Unchanged));
        assert!(creds.authenticate(&bearer(new)).is_ok());

        // So is a file that disappears (a rotation caught half-way).
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(creds.refresh(), Refresh::Refused(_)));
        assert!(creds.authenticate(&bearer(new)).is_ok());
        write_tokens(&path, old);
        assert!(matches!(creds.refresh(), Refresh::Reloaded));
        assert!(creds.authenticate(&bearer(old)).is_ok());
    }
}

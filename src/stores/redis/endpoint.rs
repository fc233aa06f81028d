//! A Redis server address with credentials, parsed from `redis://` and `rediss://` URLs, how to
//! open connections to one of its databases, and the mapping of driver errors to actionable
//! [`StoreError`]s.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion,
    RedisConnectionInfo, RedisError, TlsCertificates,
};

use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::resolve::{check_ca_file, check_host, encode_userinfo, with_userinfo_hint};
use crate::secret::Secret;

/// TLS settings of a `rediss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// Accept any certificate (`?insecure=true`): for self-signed servers on a trusted network.
    pub insecure: bool,
    /// Trust this PEM file instead of the system's certificate store (`?ca=FILE`).
    pub ca_file: Option<PathBuf>,
}

/// One Redis server as offload connects to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisEndpoint {
    pub host: String,
    pub port: u16,
    /// ACL user; `None` means the `default` user.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<RedisTls>,
    /// The database number in the URL path, when there is one.
    pub db: Option<i64>,
}

impl RedisEndpoint {
    /// Parse `redis[s]://[user[:password]@]host[:port][/db][?insecure=true&ca=FILE]`.
    pub fn parse(url: &str) -> Result<RedisEndpoint, String> {
        let expected = "expected redis://[user[:password]@]host:port[/db] or rediss://... for TLS";
        let parsed = url::Url::parse(url)
            .map_err(|e| with_userinfo_hint(url, format!("not a Redis URL ({e}); {expected}")))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(format!(
                    "URL scheme `{other}` is not redis:// or rediss://; {expected}"
                ))
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                with_userinfo_hint(url, format!("the Redis URL has no host; {expected}"))
            })?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        check_host(&host).map_err(|d| with_userinfo_hint(url, format!("in the Redis URL, {d}")))?;
        if parsed.port() == Some(0) {
            return Err("in the Redis URL, 0 is not a port (1-65535)".into());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = Some(decode(parsed.username())).filter(|u| !u.is_empty());
        let password = parsed.password().map(|p| Secret::new(decode(p)));
        let path = parsed.path().trim_matches('/');
        let db = if path.is_empty() {
            None
        } else {
            Some(
                path.parse::<i64>()
                    .ok()
                    .filter(|d| *d >= 0)
                    .ok_or_else(|| {
                        if path.contains('@') {
                            // A user or password with a raw `/` puts the rest of it in the path:
                            // never echo it (found by fuzzing).
                            with_userinfo_hint(
                                url,
                                format!(
                                    "the Redis URL's path is not a database number; {expected}"
                                ),
                            )
                        } else {
                            format!("`/{path}` is not a database number; {expected}")
                        }
                    })?,
            )
        };
        let mut insecure = parsed.fragment() == Some("insecure");
        let mut ca_file = None;
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "insecure" => insecure = matches!(v.as_ref(), "true" | "1" | "yes"),
                "ca" => ca_file = Some(PathBuf::from(v.as_ref())),
                other => {
                    let known = "known: insecure=true, ca=FILE (with rediss://)";
                    // A user or password with a raw `?` puts the rest of it here: never echo it.
                    return Err(if other.contains('@') {
                        with_userinfo_hint(url, format!("an unknown Redis URL option; {known}"))
                    } else {
                        format!("unknown Redis URL option `{other}`; {known}")
                    });
                }
            }
        }
        if !tls && (insecure || ca_file.is_some()) {
            return Err("insecure= and ca= apply to TLS only: use rediss://".into());
        }
        if insecure && ca_file.is_some() {
            return Err(
                "ca= verifies the certificate and insecure=true skips that: keep one of them"
                    .into(),
            );
        }
        if let Some(ca) = &ca_file {
            check_ca_file("ca", ca)?;
        }
        Ok(RedisEndpoint {
            host,
            port: parsed.port().unwrap_or(6379),
            username,
            password,
            tls: tls.then_some(RedisTls { insecure, ca_file }),
            db,
        })
    }

    /// `host:port`, for messages and the job's identity.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The ACL user name as shown to people.
    pub fn user(&self) -> &str {
        self.username.as_deref().unwrap_or("default")
    }

    /// The URL without its password.
    pub fn public_url(&self) -> String {
        let enc = encode_userinfo;
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let user = self
            .username
            .as_deref()
            .map(|u| format!("{}@", enc(u)))
            .unwrap_or_default();
        let db = self.db.map(|d| format!("/{d}")).unwrap_or_default();
        let mut query = Vec::new();
        if let Some(t) = &self.tls {
            if t.insecure {
                query.push("insecure=true".to_string());
            }
            if let Some(ca) = &t.ca_file {
                query.push(format!("ca={}", enc(&ca.display().to_string())));
            }
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        format!("{scheme}://{user}{}{db}{query}", self.address())
    }

    /// What the certificate check of this endpoint skips, for the plan's warning; `None` when
    /// the connection is plain or verified.
    pub fn tls_warning(&self) -> Option<String> {
        self.tls.as_ref().filter(|t| t.insecure).map(|_| {
            "rediss:// with insecure=true: encrypted, but the server's certificate is not verified; pass ca=FILE (the CA that signed it) instead to verify it".to_string()
        })
    }

    /// A client for one database of this server.
    pub fn client(&self, db: i64) -> Result<Client, RedisError> {
        let addr = match &self.tls {
            None => ConnectionAddr::Tcp(self.host.clone(), self.port),
            Some(t) => ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: t.insecure,
                tls_params: None,
            },
        };
        let info = ConnectionInfo {
            addr,
            redis: RedisConnectionInfo {
                db,
                username: self.username.clone(),
                password: self.password.as_ref().map(|p| p.expose().to_string()),
                protocol: ProtocolVersion::RESP2,
            },
        };
        match self.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cannot read the CA file named by ca=",
                        format!("{}: {e}", ca.display()),
                    ))
                })?;
                Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => Client::open(info),
        }
    }

    /// Open a pipelining connection to one database.
    pub async fn connect(&self, db: i64) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(10))
            .set_response_timeout(Duration::from_secs(300));
        self.client(db)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// Turn a driver error into a [`StoreError`] that says what to do.
pub fn map_error(side: Side, address: &str, e: &RedisError) -> StoreError {
    let text = e.to_string();
    let code = e.code().unwrap_or("");
    let lower = text.to_ascii_lowercase();
    let creds = format!(
        "check the {side} ACL user and password (in the URL, the OFFLOAD_{}_REDIS_PASSWORD variable, or --{}-redis-password-file)",
        side.env_prefix(),
        side.flag_prefix()
    );
    let (kind, hint) = if code == "WRONGPASS"
        || code == "NOAUTH"
        || e.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("invalid username-password")
        || lower.contains("wrongpass")
        || lower.contains("noauth")
    {
        (ErrorKind::Auth, creds)
    } else if code == "NOPERM" || lower.contains("noperm") {
        (
            ErrorKind::Auth,
            format!("the {side} ACL user may not run the command named above: allow it (e.g. `ACL SETUSER <user> +@all ~*`) or connect as a user that may"),
        )
    } else if code == "OOM" || lower.contains("oom command not allowed") {
        (
            ErrorKind::Query,
            "the target reached its maxmemory: raise maxmemory (or choose a bigger server) and run again with --resume".to_string(),
        )
    } else if code == "READONLY" {
        (
            ErrorKind::Query,
            format!(
                "the {side} server is a read-only replica: point --{}-redis at the primary",
                side.flag_prefix()
            ),
        )
    } else if code == "LOADING" || code == "BUSY" || code == "TRYAGAIN" || code == "MASTERDOWN" {
        (
            ErrorKind::Transient,
            "offload retries this on its own; if it keeps failing, check the server's log"
                .to_string(),
        )
    } else if lower.contains("db index is out of range") || lower.contains("invalid db index") {
        (
            ErrorKind::Input,
            format!("the {side} server has fewer databases than the number asked for: raise its `databases` setting or map the database with --redis-dbs SRC:DST"),
        )
    } else if lower.contains("invalid peer certificate")
        || lower.contains("certificate not valid for name")
        || lower.contains("unknownissuer")
    {
        (
            ErrorKind::Input,
            if lower.contains("not valid for name") {
                format!("the {side} server's certificate does not name the host dialled: connect by a name the certificate holds (or, to skip the check, add ?insecure=true to the {side} URL, which the plan warns about)")
            } else {
                format!("the {side} server's certificate is not signed by a trusted CA: pass the CA that signed it with ?ca=FILE in the {side} URL (or, to skip the check, ?insecure=true, which the plan warns about)")
            },
        )
    } else if lower.contains("tls")
        || lower.contains("certificate")
        || lower.contains("handshake")
        || lower.contains("corrupt message")
        || lower.contains("invalidcontenttype")
        || lower.contains("peer is incompatible")
    {
        (
            ErrorKind::Input,
            format!("TLS failed: use rediss:// only for a server that speaks TLS and redis:// for one that does not; for a self-signed certificate add ?ca=FILE (or ?insecure=true) to the {side} URL"),
        )
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
    {
        (
            ErrorKind::Connect,
            format!(
                "check that the {side} server is running and reachable from this machine, that host and port are right, and whether it expects TLS (rediss://){}",
                if side == Side::Source {
                    " (Tutor's `redis` host is only reachable inside its Docker network: pass --from-redis with an address this machine can reach)"
                } else {
                    ""
                }
            ),
        )
    } else {
        (
            ErrorKind::Query,
            "fix the cause the server names, then run the command again (a stopped copy continues with --resume)".to_string(),
        )
    };
    StoreError::new(
        StoreKind::Redis,
        address,
        kind,
        format!("{side} server: {text}"),
        hint,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, PEM).unwrap();
        let e = RedisEndpoint::parse(&format!(
            "rediss://app%40x:p%40ss:w@cache.example.org:6380/3?ca={}",
            ca.display()
        ))
        .unwrap();
        assert_eq!(e.username.as_deref(), Some("app@x"));
        assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss:w");
        assert_eq!(e.address(), "cache.example.org:6380");
        assert_eq!(e.db, Some(3));
        let tls = e.tls.clone().unwrap();
        assert_eq!(tls.ca_file, Some(ca.clone()));
        assert!(!tls.insecure);
        let shown = e.public_url();
        assert!(
            !shown.contains("p%40ss") && !shown.contains("p@ss"),
            "{shown}"
        );
        assert!(!format!("{e:?}").contains("p@ss"));
        // The public URL parses back to the same endpoint, less the password.
        let back = RedisEndpoint::parse(&shown).unwrap();
        assert_eq!(back.username, e.username);
        assert_eq!(back.tls, e.tls);
        assert_eq!(back.db, e.db);

        let plain = RedisEndpoint::parse("redis://:secret@h").unwrap();
        assert_eq!(plain.port, 6379);
        assert_eq!(plain.username, None);
        assert_eq!(plain.user(), "default");
        assert_eq!(plain.password.unwrap().expose(), "secret");
        assert!(RedisEndpoint::parse("mysql://h").is_err());
        assert!(RedisEndpoint::parse("redis://h/x").is_err());
        assert!(RedisEndpoint::parse("redis://h?insecure=true").is_err());
        assert!(
            RedisEndpoint::parse("rediss://h#insecure")
                .unwrap()
                .tls
                .unwrap()
                .insecure
        );
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn ca_files_are_checked_and_insecure_is_warned_about() {
        let err = RedisEndpoint::parse("rediss://h?ca=/nonexistent/ca.pem").unwrap_err();
        assert!(err.contains("ca: cannot read"), "{err}");
        let err = RedisEndpoint::parse("rediss://h?ca=/etc/hostname").unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, PEM).unwrap();
        let both = format!("rediss://h?ca={}&insecure=true", ca.display());
        assert!(RedisEndpoint::parse(&both)
            .unwrap_err()
            .contains("keep one"));
        let w = RedisEndpoint::parse("rediss://h?insecure=true")
            .unwrap()
            .tls_warning()
            .unwrap();
        assert!(w.contains("not verified") && w.contains("ca=FILE"), "{w}");
        assert!(RedisEndpoint::parse("rediss://h")
            .unwrap()
            .tls_warning()
            .is_none());
        assert!(RedisEndpoint::parse("redis://h")
            .unwrap()
            .tls_warning()
            .is_none());
    }

    use crate::resolve::test_support::RESERVED_USERS as USERS;

    #[test]
    fn the_public_url_parses_back_to_the_same_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca").join("ca%1.pem");
        std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
        std::fs::write(&ca, PEM).unwrap();
        for user in USERS {
            for host in ["cache.example.org", "::1"] {
                for tls in [
                    None,
                    Some(RedisTls {
                        insecure: false,
                        ca_file: Some(ca.clone()),
                    }),
                    Some(RedisTls {
                        insecure: true,
                        ca_file: None,
                    }),
                ] {
                    let e = RedisEndpoint {
                        host: host.into(),
                        port: 6380,
                        username: Some(user.to_string()),
                        password: None,
                        tls,
                        db: Some(2),
                    };
                    let url = e.public_url();
                    assert_eq!(RedisEndpoint::parse(&url).as_ref(), Ok(&e), "{url}");
                }
            }
        }
    }

    #[test]
    fn bad_ports_hosts_and_raw_reserved_characters_are_refused() {
        for bad in [
            "redis://h:0",
            "redis://h:65536",
            "redis://h:abc",
            "redis://:6379",
            "redis://u@:6379",
            "redis://",
            "junk",
        ] {
            assert!(RedisEndpoint::parse(bad).is_err(), "{bad}");
        }
        let err = RedisEndpoint::parse("redis://u:se/cret@h:6379").unwrap_err();
        assert!(
            err.contains("percent-encode") && err.contains("/ as %2F"),
            "{err}"
        );
        assert!(!err.contains("se/cret"), "{err}");
    }
}

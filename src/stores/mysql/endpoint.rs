//! A MySQL server address with credentials, parsed from `mysql://user:password@host:port` URLs,
//! and the mapping of driver errors to actionable [`StoreError`]s.

use std::time::Duration;

use mysql_async::{Opts, OptsBuilder, PoolConstraints, PoolOpts, SslOpts};

use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::resolve::{check_host, encode_userinfo, with_userinfo_hint};
use crate::secret::Secret;

/// One MySQL server as offload connects to it.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// Require TLS (`?ssl-mode=required`, or `verify_identity` to check the certificate's name).
    pub tls: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disabled,
    Required,
    VerifyIdentity,
}

impl MysqlEndpoint {
    /// Parse `mysql://[user[:password]@]host[:port][/][?ssl-mode=...]`.
    pub fn parse(url: &str) -> Result<MysqlEndpoint, String> {
        let parsed = url::Url::parse(url).map_err(|e| {
            with_userinfo_hint(
                url,
                format!("not a MySQL URL ({e}); expected mysql://user:password@host:port"),
            )
        })?;
        if parsed.scheme() != "mysql" && parsed.scheme() != "mariadb" {
            return Err(format!(
                "URL scheme `{}` is not mysql://; expected mysql://user:password@host:port",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| with_userinfo_hint(url, "the MySQL URL has no host".into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        check_host(&host).map_err(|d| with_userinfo_hint(url, format!("in the MySQL URL, {d}")))?;
        if parsed.port() == Some(0) {
            return Err("in the MySQL URL, 0 is not a port (1-65535)".into());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = if parsed.username().is_empty() {
            "root".to_string()
        } else {
            decode(parsed.username())
        };
        let password = parsed.password().map(|p| Secret::new(decode(p)));
        let mut tls = TlsMode::Disabled;
        for (k, v) in parsed.query_pairs() {
            if k.eq_ignore_ascii_case("ssl-mode") || k.eq_ignore_ascii_case("sslmode") {
                tls = match v.to_ascii_lowercase().as_str() {
                    "disabled" | "preferred" => TlsMode::Disabled,
                    "required" | "verify_ca" => TlsMode::Required,
                    "verify_identity" => TlsMode::VerifyIdentity,
                    other => {
                        return Err(format!(
                            "unknown ssl-mode `{other}`; use disabled, required or verify_identity"
                        ))
                    }
                };
            }
        }
        Ok(MysqlEndpoint {
            host,
            port: parsed.port().unwrap_or(3306),
            user,
            password,
            tls,
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

    /// The URL without its password.
    pub fn public_url(&self) -> String {
        let tls = match self.tls {
            TlsMode::Disabled => "",
            TlsMode::Required => "?ssl-mode=required",
            TlsMode::VerifyIdentity => "?ssl-mode=verify_identity",
        };
        format!(
            "mysql://{}@{}{}",
            encode_userinfo(&self.user),
            self.address(),
            tls
        )
    }

    /// Driver options; `setup` runs on every new connection and after every reset.
    pub fn opts(&self, setup: Vec<String>, max_conns: usize) -> Opts {
        let constraints = PoolConstraints::new(0, max_conns.max(1)).expect("0 <= max");
        let mut b = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.as_ref().map(|p| p.expose().to_string()))
            .prefer_socket(false)
            .stmt_cache_size(64)
            .max_allowed_packet(Some(256 * 1024 * 1024))
            .wait_timeout(Some(28_800))
            .conn_ttl(Some(Duration::from_secs(3600)))
            .setup(setup)
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(constraints)
                    .with_reset_connection(false),
            );
        match self.tls {
            TlsMode::Disabled => {}
            TlsMode::Required => {
                b = b.ssl_opts(
                    SslOpts::default()
                        .with_danger_accept_invalid_certs(true)
                        .with_danger_skip_domain_validation(true),
                )
            }
            TlsMode::VerifyIdentity => b = b.ssl_opts(SslOpts::default()),
        }
        Opts::from(b)
    }
}

/// Turn a driver error into a [`StoreError`] that says what to do.
pub fn map_error(side: Side, address: &str, e: mysql_async::Error) -> StoreError {
    use mysql_async::Error as E;
    let (kind, detail, hint) = match &e {
        E::Server(s) => {
            let detail = format!("server error {} ({}): {}", s.code, s.state, s.message);
            match s.code {
                1045 => (
                    ErrorKind::Auth,
                    detail,
                    format!("check the {side} user and password (in the URL, the OFFLOAD_{}_MYSQL_PASSWORD variable, or --{}-mysql-password-file)", side.env_prefix(), side.flag_prefix()),
                ),
                1044 | 1142 | 1143 | 1227 | 1370 => (
                    ErrorKind::Auth,
                    detail,
                    format!("grant the {side} user the privilege named above, or connect as a user that has it"),
                ),
                1205 | 1213 | 1040 | 1053 | 2006 | 2013 | 1927 | 4031 => (
                    ErrorKind::Transient,
                    detail,
                    "offload retries this on its own; if it keeps failing, check the server's load and logs".to_string(),
                ),
                _ => (
                    ErrorKind::Query,
                    detail,
                    "fix the cause the server names, then run the command again (a stopped copy continues with --resume)".to_string(),
                ),
            }
        }
        E::Io(io) => (
            ErrorKind::Connect,
            format!("cannot talk to the {side} server: {io}"),
            format!("check that it is running and reachable from this machine, and that host and port are right{}", if side == Side::Source { " (Tutor's `mysql` host is only reachable inside its Docker network: pass --from-mysql with an address this machine can reach)" } else { "" }),
        ),
        E::Driver(d) => (
            ErrorKind::Query,
            format!("driver error talking to the {side} server: {d}"),
            "check the server version and TLS settings (?ssl-mode=required)".to_string(),
        ),
        E::Url(u) => (ErrorKind::Input, format!("bad {side} URL: {u}"), "expected mysql://user:password@host:port".to_string()),
        E::Other(o) => (ErrorKind::Query, format!("{side}: {o}"), String::new()),
    };
    StoreError::new(StoreKind::Mysql, address, kind, detail, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_the_password() {
        let e =
            MysqlEndpoint::parse("mysql://app%40x:p%40ss:w@db.example.org:3307/?ssl-mode=required")
                .unwrap();
        assert_eq!(e.user, "app@x");
        assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss:w");
        assert_eq!(e.address(), "db.example.org:3307");
        assert_eq!(e.tls, TlsMode::Required);
        assert!(!e.public_url().contains("p@ss"));
        assert!(!format!("{e:?}").contains("p@ss"));
        assert!(MysqlEndpoint::parse("redis://x").is_err());
        assert_eq!(MysqlEndpoint::parse("mysql://h").unwrap().port, 3306);
    }

    use crate::resolve::test_support::RESERVED_USERS as USERS;

    #[test]
    fn the_public_url_parses_back_to_the_same_endpoint() {
        for user in USERS {
            for host in ["db.example.org", "10.0.0.5", "::1"] {
                for tls in [
                    TlsMode::Disabled,
                    TlsMode::Required,
                    TlsMode::VerifyIdentity,
                ] {
                    let e = MysqlEndpoint {
                        host: host.into(),
                        port: 3307,
                        user: user.to_string(),
                        password: None,
                        tls,
                    };
                    let url = e.public_url();
                    assert_eq!(MysqlEndpoint::parse(&url).as_ref(), Ok(&e), "{url}");
                }
            }
        }
    }

    #[test]
    fn bad_ports_hosts_and_raw_reserved_characters_are_refused() {
        for bad in [
            "mysql://h:0",
            "mysql://h:65536",
            "mysql://h:99999999",
            "mysql://h:abc",
            "mysql://:3306",
            "mysql://u@:3306",
            "mysql://",
            "mysql://a b:3306",
            "junk",
        ] {
            assert!(MysqlEndpoint::parse(bad).is_err(), "{bad}");
        }
        let err = MysqlEndpoint::parse("mysql://root:se/cr%et@db:3306").unwrap_err();
        assert!(
            err.contains("percent-encode") && err.contains("/ as %2F"),
            "{err}"
        );
        assert!(!err.contains("se/cr") && !err.contains("cr%et"), "{err}");
    }
}

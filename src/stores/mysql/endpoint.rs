//! A MySQL server address with credentials, parsed from `mysql://user:password@host:port` URLs,
//! its TLS mode as MySQL defines `ssl-mode` (settled against the server when the first connection
//! opens), and the mapping of driver errors to actionable [`StoreError`]s.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::resolve::{check_ca_file, check_host, encode_userinfo, with_userinfo_hint};
use crate::secret::Secret;

/// One MySQL server as offload connects to it.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// `?ssl-mode=`, or [`TlsMode::default_for`] the host when the URL names none.
    pub tls: TlsMode,
    /// `?ssl-ca=FILE`: the CA certificates (PEM) that verify the server's certificate instead of
    /// the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
}

/// MySQL's `ssl-mode`, as MySQL's own clients define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disabled,
    /// TLS when the server offers it, else plain; the certificate is not verified.
    Preferred,
    /// TLS or nothing; the certificate is not verified.
    Required,
    /// TLS with the certificate's chain verified (against `ssl-ca`, else the bundled roots); the
    /// host name is not compared with the certificate.
    VerifyCa,
    /// TLS with the chain verified and the host name matched against the certificate.
    VerifyIdentity,
}

impl TlsMode {
    /// The `ssl-mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Preferred => "preferred",
            TlsMode::Required => "required",
            TlsMode::VerifyCa => "verify_ca",
            TlsMode::VerifyIdentity => "verify_identity",
        }
    }

    fn parse(text: &str) -> Option<TlsMode> {
        [
            TlsMode::Disabled,
            TlsMode::Preferred,
            TlsMode::Required,
            TlsMode::VerifyCa,
            TlsMode::VerifyIdentity,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The mode when the URL names none: `disabled` on loopback and for Tutor's in-network
    /// `mysql` host (what Tutor itself does there), else MySQL's own default, `preferred`.
    pub fn default_for(host: &str) -> TlsMode {
        let local = host.eq_ignore_ascii_case("mysql")
            || host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if local {
            TlsMode::Disabled
        } else {
            TlsMode::Preferred
        }
    }

    /// Whether the certificate's chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, TlsMode::VerifyCa | TlsMode::VerifyIdentity)
    }
}

/// Which way the first connection settled a mode that depends on the server: whether TLS is on
/// (`preferred`), and for `verify_ca` the name of the server's verified certificate, which the
/// pool's connections then check instead of the host they dial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettled {
    pub encrypted: bool,
    pub certificate_name: Option<String>,
}

impl MysqlEndpoint {
    /// Parse `mysql://[user[:password]@]host[:port][/][?ssl-mode=MODE&ssl-ca=FILE]`.
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
        let mut tls = None;
        let mut ca_file = None;
        for (k, v) in parsed.query_pairs() {
            let key = k.to_ascii_lowercase().replace('_', "-");
            match key.as_str() {
                "ssl-mode" | "sslmode" => {
                    tls = Some(TlsMode::parse(&v).ok_or_else(|| {
                        format!("unknown ssl-mode `{v}`; use disabled, preferred, required, verify_ca or verify_identity")
                    })?)
                }
                "ssl-ca" | "sslca" => {
                    let path = PathBuf::from(v.as_ref());
                    check_ca_file("ssl-ca", &path)?;
                    ca_file = Some(path);
                }
                _ => {
                    return Err(format!(
                        "unknown MySQL URL option `{k}`; known: ssl-mode=disabled|preferred|required|verify_ca|verify_identity, ssl-ca=FILE"
                    ))
                }
            }
        }
        // As MySQL's clients do: a CA file without a mode means verify_ca.
        let tls = match (tls, &ca_file) {
            (Some(mode), _) => mode,
            (None, Some(_)) => TlsMode::VerifyCa,
            (None, None) => TlsMode::default_for(&host),
        };
        if ca_file.is_some() && !tls.verifies() {
            return Err(format!(
                "ssl-ca verifies certificates, which ssl-mode={} does not: use ssl-mode=verify_ca or verify_identity with it, or leave ssl-ca out",
                tls.as_str()
            ));
        }
        Ok(MysqlEndpoint {
            port: parsed.port().unwrap_or(3306),
            user,
            password,
            tls,
            ca_file,
            host,
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
        let mut query = Vec::new();
        if self.tls != TlsMode::default_for(&self.host) || self.ca_file.is_some() {
            query.push(format!("ssl-mode={}", self.tls.as_str()));
        }
        if let Some(ca) = &self.ca_file {
            let path = ca.display().to_string();
            query.push(format!(
                "ssl-ca={}",
                url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
            ));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        format!(
            "mysql://{}@{}{query}",
            encode_userinfo(&self.user),
            self.address(),
        )
    }

    /// What the certificate check of this endpoint skips, for the plan's warning; `None` when
    /// the connection is plain or fully verified.
    pub fn tls_warning(&self) -> Option<String> {
        match self.tls {
            TlsMode::Disabled | TlsMode::VerifyIdentity => None,
            TlsMode::Preferred => Some(
                "ssl-mode=preferred: TLS when the server offers it, else plain, and the server's certificate is not verified; pass ssl-mode=verify_identity (with ssl-ca=FILE for a private CA) to verify it".into(),
            ),
            TlsMode::Required => Some(
                "ssl-mode=required: encrypted, but the server's certificate is not verified; pass ssl-mode=verify_identity (with ssl-ca=FILE for a private CA) to verify it".into(),
            ),
            TlsMode::VerifyCa => Some(
                "ssl-mode=verify_ca: the certificate's chain is verified, its host name is not; pass ssl-mode=verify_identity to check the name too".into(),
            ),
        }
    }

    /// How connections to this endpoint are protected, for the plan: `cipher` is the session's
    /// `Ssl_cipher` (empty or `None` when plain), `settled` what the first connection settled.
    pub fn tls_description(&self, cipher: Option<&str>, settled: Option<&TlsSettled>) -> String {
        let roots = match &self.ca_file {
            Some(ca) => format!("the CA in {}", ca.display()),
            None => "the bundled Mozilla roots".to_string(),
        };
        let mode = self.tls.as_str();
        match cipher.filter(|c| !c.is_empty()) {
            None => match self.tls {
                TlsMode::Preferred => {
                    "not encrypted: the server offers no TLS (ssl-mode=preferred)".to_string()
                }
                _ if self.tls == TlsMode::default_for(&self.host) => "not encrypted (ssl-mode=disabled, the default for a loopback or Tutor-network host; add ?ssl-mode=verify_identity to the URL for TLS)".to_string(),
                _ => format!("not encrypted (ssl-mode={mode})"),
            },
            Some(cipher) => {
                let what = match self.tls {
                    TlsMode::Disabled | TlsMode::Preferred | TlsMode::Required => {
                        format!("the certificate is NOT verified (ssl-mode={mode})")
                    }
                    TlsMode::VerifyCa => format!(
                        "the certificate chain is verified against {roots}, the host name is not{} (ssl-mode=verify_ca)",
                        settled
                            .and_then(|s| s.certificate_name.as_deref())
                            .map(|n| format!("; the certificate names {n}"))
                            .unwrap_or_default()
                    ),
                    TlsMode::VerifyIdentity => format!(
                        "the certificate chain is verified against {roots} and names this host (ssl-mode=verify_identity)"
                    ),
                };
                format!("TLS ({cipher}); {what}")
            }
        }
    }

    /// Driver options without TLS; `setup` runs on every new connection and after every reset.
    fn base_opts(&self, setup: Vec<String>, max_conns: usize) -> OptsBuilder {
        let constraints = PoolConstraints::new(0, max_conns.max(1)).expect("0 <= max");
        OptsBuilder::default()
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
            )
    }

    /// The TLS options of this mode: none for `disabled`; any certificate for `preferred` and
    /// `required`; a verified chain (the CA file alone when one is named, else the bundled
    /// Mozilla roots) for the `verify_*` modes, matched against `name` (the host by default).
    fn ssl_opts(&self, name: Option<&str>) -> Option<SslOpts> {
        let verified = || {
            let mut ssl = SslOpts::default();
            if let Some(ca) = &self.ca_file {
                ssl = ssl
                    .with_root_certs(vec![ca.clone().into()])
                    .with_disable_built_in_roots(true);
            }
            ssl.with_danger_tls_hostname_override(name.map(str::to_string))
        };
        match self.tls {
            TlsMode::Disabled => None,
            TlsMode::Preferred | TlsMode::Required => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyCa | TlsMode::VerifyIdentity => Some(verified()),
        }
    }

    /// Driver options for a pool of `max_conns` connections, with TLS as `settled` says (from
    /// [`MysqlEndpoint::settle`]); `setup` runs on every new connection and after every reset.
    pub fn opts(&self, setup: Vec<String>, max_conns: usize, settled: &TlsSettled) -> Opts {
        let b = self.base_opts(setup, max_conns);
        if !settled.encrypted {
            return Opts::from(b);
        }
        Opts::from(b.ssl_opts(self.ssl_opts(settled.certificate_name.as_deref())))
    }

    /// Open one connection the way the mode says, to settle what depends on the server:
    /// `preferred` falls back to plain TCP when the server offers no TLS; `verify_ca` verifies the
    /// chain, and where the certificate names another host than the one dialled, learns the name
    /// from the verified certificate so every connection checks the chain against it. Other modes
    /// connect once, so that a refused certificate is reported before any work.
    pub async fn settle(&self) -> Result<TlsSettled, mysql_async::Error> {
        let attempt = |name: Option<&str>| {
            let b = self.base_opts(Vec::new(), 1);
            let b = match self.ssl_opts(name) {
                Some(ssl) => b.ssl_opts(ssl),
                None => b,
            };
            Conn::new(Opts::from(b))
        };
        let settled = match attempt(None).await {
            Ok(conn) => {
                let _ = conn.disconnect().await;
                TlsSettled {
                    encrypted: self.tls != TlsMode::Disabled,
                    certificate_name: None,
                }
            }
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if self.tls == TlsMode::Preferred => {
                tracing::info!(host = %self.address(), "the MySQL server offers no TLS; ssl-mode=preferred connects without it");
                TlsSettled::default()
            }
            Err(e) if self.tls == TlsMode::VerifyCa => {
                // webpki checks the chain before the name: a name mismatch means a trusted chain.
                let Some(name) = name_mismatch(&e).and_then(|names| names.into_iter().next())
                else {
                    return Err(e);
                };
                tracing::info!(host = %self.address(), certificate = %name, "ssl-mode=verify_ca: the certificate names another host; its chain is verified against that name");
                let conn = attempt(Some(&name)).await?;
                let _ = conn.disconnect().await;
                TlsSettled {
                    encrypted: true,
                    certificate_name: Some(name),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(settled)
    }
}

/// A connection pool to one endpoint, opened on first use once [`MysqlEndpoint::settle`] has
/// settled its TLS against the server.
pub struct SettledPool {
    endpoint: MysqlEndpoint,
    setup: Vec<String>,
    max_conns: usize,
    pool: tokio::sync::OnceCell<(Pool, TlsSettled)>,
}

impl SettledPool {
    /// A pool of up to `max_conns` connections; `setup` runs on each new one.
    pub fn new(endpoint: &MysqlEndpoint, setup: Vec<String>, max_conns: usize) -> SettledPool {
        SettledPool {
            endpoint: endpoint.clone(),
            setup,
            max_conns,
            pool: tokio::sync::OnceCell::new(),
        }
    }

    /// A connection from the pool, settling TLS first when this is the first.
    pub async fn get_conn(&self) -> Result<Conn, mysql_async::Error> {
        let (pool, _) = self
            .pool
            .get_or_try_init(|| async {
                let settled = self.endpoint.settle().await?;
                let opts = self
                    .endpoint
                    .opts(self.setup.clone(), self.max_conns, &settled);
                Ok::<_, mysql_async::Error>((Pool::new(opts), settled))
            })
            .await?;
        pool.get_conn().await
    }

    /// How TLS was settled, once a connection has opened.
    pub fn settled(&self) -> Option<&TlsSettled> {
        self.pool.get().map(|(_, s)| s)
    }
}

/// The first `rustls::Error` among an error's causes.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t);
            }
        }
        cur = err.source();
    }
    None
}

/// When a certificate was refused only because it names other hosts, those names (as a TLS
/// server name: a DNS name, a wildcard's stand-in, or an IP address).
fn name_mismatch(e: &mysql_async::Error) -> Option<Vec<String>> {
    use rustls::CertificateError as C;
    let presented = match tls_error(e)? {
        rustls::Error::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => presented,
        _ => return None,
    };
    let names: Vec<String> = presented
        .iter()
        .filter_map(|p| {
            if let Some(dns) = p
                .strip_prefix("DnsName(\"")
                .and_then(|r| r.strip_suffix("\")"))
            {
                Some(match dns.strip_prefix("*.") {
                    Some(domain) => format!("offload-verify-ca.{domain}"),
                    None => dns.to_string(),
                })
            } else {
                p.strip_prefix("IpAddress(")
                    .and_then(|r| r.strip_suffix(')'))
                    .map(str::to_string)
            }
        })
        .collect();
    (!names.is_empty()).then_some(names)
}

/// What a TLS failure means and what to do, for [`map_error`]; `None` for other errors.
fn tls_failure(side: Side, e: &mysql_async::Error) -> Option<(String, String)> {
    use rustls::CertificateError as C;
    if matches!(
        e,
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer)
    ) {
        return Some((
            format!("the {side} server does not offer TLS, which its ssl-mode requires"),
            format!("enable TLS on the server, or (on a trusted network) set ssl-mode=preferred or disabled in the {side} URL"),
        ));
    }
    let tls = tls_error(e)?;
    let url = format!("the {side} URL");
    let (detail, hint) = match tls {
        rustls::Error::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => (
            format!("the {side} server's certificate is not valid for the host dialled (it names {})", presented.join(", ")),
            format!("connect by a name the certificate holds, or use ssl-mode=verify_ca in {url} to verify the chain without the name"),
        ),
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            format!("the {side} server's certificate is not signed by a trusted CA ({tls})"),
            format!("pass the CA certificate that signed it with ssl-ca=FILE in {url} (or, to encrypt without verifying, ssl-mode=required, which the plan warns about)"),
        ),
        rustls::Error::InvalidCertificate(_) => (
            format!("the {side} server's certificate was refused ({tls})"),
            format!("check the certificate (dates, usage) and the CA named by ssl-ca=FILE in {url}"),
        ),
        other => (
            format!("TLS with the {side} server failed ({other})"),
            format!("check that the server speaks TLS, and the ssl-mode and ssl-ca in {url}"),
        ),
    };
    Some((detail, hint))
}

/// Turn a driver error into a [`StoreError`] that says what to do.
pub fn map_error(side: Side, address: &str, e: mysql_async::Error) -> StoreError {
    use mysql_async::Error as E;
    if let Some((detail, hint)) = tls_failure(side, &e) {
        return StoreError::new(StoreKind::Mysql, address, ErrorKind::Input, detail, hint);
    }
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
            "check the server version and the TLS settings (ssl-mode, ssl-ca) in the URL".to_string(),
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
        assert_eq!(e.ca_file, None);
        assert!(!e.public_url().contains("p@ss"));
        assert!(!format!("{e:?}").contains("p@ss"));
        assert!(MysqlEndpoint::parse("redis://x").is_err());
        assert_eq!(MysqlEndpoint::parse("mysql://h").unwrap().port, 3306);
    }

    use crate::resolve::test_support::RESERVED_USERS as USERS;

    /// A file that passes the CA file check, in a folder whose name needs encoding in a URL.
    fn ca_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my ca&x=%1.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn the_public_url_parses_back_to_the_same_endpoint() {
        let (_dir, ca) = ca_file();
        for user in USERS {
            for host in ["db.example.org", "10.0.0.5", "::1", "mysql"] {
                for tls in [
                    TlsMode::Disabled,
                    TlsMode::Preferred,
                    TlsMode::Required,
                    TlsMode::VerifyCa,
                    TlsMode::VerifyIdentity,
                ] {
                    let files = if tls.verifies() {
                        vec![None, Some(ca.clone())]
                    } else {
                        vec![None]
                    };
                    for ca_file in files {
                        let e = MysqlEndpoint {
                            host: host.into(),
                            port: 3307,
                            user: user.to_string(),
                            password: None,
                            tls,
                            ca_file,
                        };
                        let url = e.public_url();
                        assert_eq!(MysqlEndpoint::parse(&url).as_ref(), Ok(&e), "{url}");
                    }
                }
            }
        }
    }

    #[test]
    fn ssl_modes_follow_mysql() {
        let mode = |url: &str| MysqlEndpoint::parse(url).map(|e| e.tls);
        assert_eq!(mode("mysql://h?ssl-mode=DISABLED"), Ok(TlsMode::Disabled));
        assert_eq!(mode("mysql://h?sslmode=preferred"), Ok(TlsMode::Preferred));
        assert_eq!(mode("mysql://h?ssl_mode=required"), Ok(TlsMode::Required));
        assert_eq!(mode("mysql://h?ssl-mode=verify_ca"), Ok(TlsMode::VerifyCa));
        assert_eq!(
            mode("mysql://h?ssl-mode=verify_identity"),
            Ok(TlsMode::VerifyIdentity)
        );
        // No mode: plain on loopback and Tutor's `mysql` host, MySQL's `preferred` elsewhere.
        assert_eq!(mode("mysql://127.0.0.1:3306"), Ok(TlsMode::Disabled));
        assert_eq!(mode("mysql://[::1]:3306"), Ok(TlsMode::Disabled));
        assert_eq!(mode("mysql://mysql:3306"), Ok(TlsMode::Disabled));
        assert_eq!(mode("mysql://db.example.org"), Ok(TlsMode::Preferred));
        // A CA file without a mode means verify_ca, as in MySQL's clients.
        let (_dir, ca) = ca_file();
        let with_ca = format!(
            "mysql://db.example.org?ssl-ca={}",
            url::form_urlencoded::byte_serialize(ca.display().to_string().as_bytes())
                .collect::<String>()
        );
        let e = MysqlEndpoint::parse(&with_ca).unwrap();
        assert_eq!((e.tls, e.ca_file.as_ref()), (TlsMode::VerifyCa, Some(&ca)));

        for (bad, says) in [
            ("mysql://h?ssl-mode=verify", "unknown ssl-mode `verify`"),
            (
                "mysql://h?ssl-mode=required&ssl-ca=/etc/hostname",
                "holds no PEM",
            ),
            (
                "mysql://h?ssl-ca=/nonexistent/ca.pem",
                "ssl-ca: cannot read",
            ),
            (
                "mysql://h?sslrootcert=x",
                "unknown MySQL URL option `sslrootcert`",
            ),
        ] {
            let err = MysqlEndpoint::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = MysqlEndpoint::parse(&format!("{with_ca}&ssl-mode=required")).unwrap_err();
        assert!(err.contains("ssl-mode=required does not"), "{err}");
    }

    #[test]
    fn only_full_verification_goes_without_a_warning() {
        let e = |mode: &str| {
            MysqlEndpoint::parse(&format!("mysql://db.example.org?ssl-mode={mode}")).unwrap()
        };
        assert!(e("disabled").tls_warning().is_none());
        assert!(e("verify_identity").tls_warning().is_none());
        for mode in ["preferred", "required"] {
            let w = e(mode).tls_warning().unwrap();
            assert!(w.contains("not verified") && w.contains(mode), "{w}");
        }
        assert!(e("verify_ca")
            .tls_warning()
            .unwrap()
            .contains("host name is not"));
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

//! A MongoDB deployment as offload connects to it, parsed from `mongodb://` and `mongodb+srv://`
//! URIs (the password kept apart, never in a string that is shown), the driver options built from
//! it, and the mapping of driver errors to actionable [`StoreError`]s.

use std::time::Duration;

use crate::core::{ErrorKind, Side, StoreError, StoreKind};
use crate::resolve::{check_ca_file, check_host, encode_userinfo, parse_port, with_userinfo_hint};
use crate::secret::Secret;
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::Client;

/// One MongoDB deployment (a server, a replica set or an SRV name).
#[derive(Debug, Clone, PartialEq)]
pub struct MongoEndpoint {
    /// `mongodb+srv://`: hosts come from DNS and TLS is on by default.
    pub srv: bool,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// The host list as written: `host:port[,host:port...]` (or the SRV name).
    pub hosts: String,
    /// The database in the URI path: the default authentication database.
    pub path_db: Option<String>,
    /// URI options in their written order, as `key=value` text (never a password).
    pub options: Vec<(String, String)>,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Check one `host[:port]` (or `[v6]:port`) of a host list.
fn check_host_port(item: &str) -> Result<(), String> {
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, rest)) => (
                h,
                Some(
                    rest.strip_prefix(':')
                        .ok_or_else(|| format!("in the MongoDB URI, `{item}` is not host:port"))?,
                ),
            ),
            None => return Err(format!("in the MongoDB URI, `{item}` lacks its `]`")),
        }
    } else {
        match item.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    check_host(host).map_err(|d| format!("in the MongoDB URI, {d}"))?;
    if let Some(port) = port {
        parse_port(port).map_err(|d| format!("in the MongoDB URI, {d}"))?;
    }
    Ok(())
}

impl MongoEndpoint {
    /// Parse `mongodb://[user[:password]@]host[:port][,host...][/db][?options]` or the
    /// `mongodb+srv://` form.
    pub fn parse(uri: &str) -> Result<MongoEndpoint, String> {
        let (srv, rest) = if let Some(r) = uri.strip_prefix("mongodb+srv://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("mongodb://") {
            (false, r)
        } else {
            return Err(
                "not a MongoDB URI; expected mongodb://user:password@host:port or mongodb+srv://user@name"
                    .into(),
            );
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(with_userinfo_hint(
                uri,
                "the MongoDB URI has no host".into(),
            ));
        }
        // A raw `/` or `?` in the user part ends the authority early, leaving the password and
        // the real host in the path or the options, where they would be shown as a database.
        if userinfo.is_none() && tail.contains('@') {
            return Err(with_userinfo_hint(
                uri,
                "the MongoDB URI has an `@` after its host part".into(),
            ));
        }
        if srv && hosts.contains([',', ':']) {
            return Err(with_userinfo_hint(
                uri,
                "a mongodb+srv:// URI names one host without a port".into(),
            ));
        }
        for host in hosts.split(',') {
            check_host_port(host).map_err(|d| with_userinfo_hint(uri, d))?;
        }
        let (user, password) = match userinfo {
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                if u.is_empty() {
                    return Err("the MongoDB URI has an empty user name".into());
                }
                (Some(decode(u)), p.map(|p| Secret::new(decode(p))))
            }
            None => (None, None),
        };
        let tail = tail.strip_prefix('/').unwrap_or(tail);
        let (db, query) = match tail.split_once('?') {
            Some((d, q)) => (d, q),
            None => (tail, ""),
        };
        let mut options = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                if pair.contains('@') {
                    // A user or password with a raw `/` or `?` puts the rest of it here: never
                    // echo it (found by fuzzing).
                    with_userinfo_hint(uri, "a URI option has no value".into())
                } else {
                    format!("URI option `{pair}` has no value")
                }
            })?;
            options.push((k.to_string(), v.to_string()));
        }
        let endpoint = MongoEndpoint {
            srv,
            user,
            password,
            hosts: hosts.to_string(),
            path_db: (!db.is_empty()).then(|| decode(db)),
            options,
        };
        endpoint.check_tls_options()?;
        Ok(endpoint)
    }

    /// The TLS options of the URI, checked before the driver sees them: booleans are `true` or
    /// `false`, a CA file is readable and holds a certificate, options that only apply to TLS
    /// are not given with `tls=false`, and `tlsAllowInvalidHostnames` (which this build's TLS
    /// library cannot honour) is refused rather than ignored.
    fn check_tls_options(&self) -> Result<(), String> {
        for key in ["tls", "ssl", "tlsInsecure", "tlsAllowInvalidCertificates"] {
            if let Some(v) = self.option(key) {
                if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                    return Err(format!(
                        "in the MongoDB URI, {key}={v} is not true or false"
                    ));
                }
            }
        }
        if self.option("tlsAllowInvalidHostnames").is_some() {
            return Err("in the MongoDB URI, tlsAllowInvalidHostnames is not supported by offload's TLS library: connect by a name the certificate holds, or use tlsAllowInvalidCertificates=true (no certificate check, which the plan warns about)".into());
        }
        let tls_only = ["tlsCAFile", "tlsInsecure", "tlsAllowInvalidCertificates"];
        if !self.tls() {
            if let Some(key) = tls_only.iter().find(|k| self.option(k).is_some()) {
                return Err(format!(
                    "in the MongoDB URI, {key} applies to TLS connections only: add tls=true, or leave {key} out"
                ));
            }
        }
        if let Some(ca) = self.option("tlsCAFile") {
            check_ca_file("tlsCAFile", std::path::Path::new(&decode(ca)))?;
        }
        Ok(())
    }

    /// What the certificate check of this endpoint skips, for the plan's warning; `None` when
    /// the connection is plain or verified.
    pub fn tls_warning(&self) -> Option<String> {
        let on = |k: &str| {
            self.option(k)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        let key = ["tlsAllowInvalidCertificates", "tlsInsecure"]
            .into_iter()
            .find(|k| on(k))?;
        self.tls().then(|| {
            format!("{key}=true: encrypted, but the server's certificate is not verified; pass tlsCAFile=FILE (the CA that signed it) instead to verify it")
        })
    }

    /// The value of a URI option (names are case-insensitive).
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Set (or replace) a URI option.
    pub fn set_option(&mut self, key: &str, value: &str) {
        self.options.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        self.options.push((key.to_string(), value.to_string()));
    }

    /// The `tlsCAFile` option, percent-decoded.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.option("tlsCAFile").map(|f| decode(f).into())
    }

    /// Whether the certificate check is skipped (`tlsAllowInvalidCertificates` or `tlsInsecure`).
    pub fn skips_certificate_check(&self) -> bool {
        ["tlsAllowInvalidCertificates", "tlsInsecure"]
            .iter()
            .any(|k| {
                self.option(k)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            })
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        let on = |v: Option<&str>| v.map(|v| v.eq_ignore_ascii_case("true"));
        on(self.option("tls"))
            .or(on(self.option("ssl")))
            .unwrap_or(self.srv)
    }

    /// The database users authenticate against.
    pub fn auth_source(&self) -> String {
        self.option("authSource")
            .map(decode)
            .or_else(|| self.path_db.clone())
            .unwrap_or_else(|| "admin".into())
    }

    /// The hosts, with the default port where none is written, for messages and the job's identity.
    pub fn address(&self) -> String {
        if self.srv {
            return self.hosts.clone();
        }
        self.hosts
            .split(',')
            .map(|h| {
                let has_port = if h.starts_with('[') {
                    h.contains("]:")
                } else {
                    h.contains(':')
                };
                if has_port {
                    h.to_string()
                } else {
                    format!("{h}:27017")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URI without its password.
    pub fn public_url(&self) -> String {
        let mut s = String::from(if self.srv {
            "mongodb+srv://"
        } else {
            "mongodb://"
        });
        if let Some(u) = &self.user {
            s.push_str(&encode_userinfo(u));
            s.push('@');
        }
        s.push_str(&self.hosts);
        s.push('/');
        if let Some(db) = &self.path_db {
            s.push_str(&encode_userinfo(db));
        }
        if !self.options.is_empty() {
            s.push('?');
            let pairs: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&pairs.join("&"));
        }
        s
    }

    /// A client for this deployment. Connects lazily; an SRV name is resolved here.
    pub async fn client(&self, side: Side, max_pool: u32) -> Result<Client, StoreError> {
        let mut options = ClientOptions::parse(self.public_url())
            .await
            .map_err(|e| map_error(side, self, e))?;
        if let (Some(c), Some(p)) = (options.credential.as_mut(), &self.password) {
            c.password = Some(p.expose().to_string());
        }
        options.app_name = Some("offload".into());
        if self.option("serverSelectionTimeoutMS").is_none() {
            options.server_selection_timeout = Some(Duration::from_secs(10));
        }
        // The driver also waits this long for a heartbeat before it declares the server gone and
        // interrupts every operation in flight. A busy server (a long scan on a single-threaded
        // one) may answer heartbeats late; an unreachable one still fails after the selection
        // timeout above.
        if self.option("connectTimeoutMS").is_none() {
            options.connect_timeout = Some(Duration::from_secs(60));
        }
        // Like mongosh: one host without a replica set name is talked to directly, so a member
        // that advertises internal host names (Docker, Kubernetes) still works from outside.
        if !self.srv
            && !self.hosts.contains(',')
            && self.option("replicaSet").is_none()
            && self.option("directConnection").is_none()
            && self.option("loadBalanced").is_none()
        {
            options.direct_connection = Some(true);
        }
        options.max_pool_size = Some(max_pool.max(2));
        Client::with_options(options).map_err(|e| map_error(side, self, e))
    }
}

/// The flag and variable that carry a side's password, for hints.
fn password_places(side: Side) -> String {
    format!(
        "in the URI, OFFLOAD_{}_MONGODB_PASSWORD or --{}-mongodb-password-file",
        side.env_prefix(),
        side.flag_prefix()
    )
}

fn tls_hint(e: &MongoEndpoint, message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if e.tls() && lower.contains("not valid for name") {
        "the server's certificate does not name the host dialled: connect by a name the certificate holds (or, to skip the check, tlsAllowInvalidCertificates=true, which the plan warns about)".into()
    } else if e.tls()
        && (lower.contains("invalid peer certificate") || lower.contains("unknownissuer"))
    {
        "the server's certificate is not signed by a trusted CA: pass the CA that signed it with tlsCAFile=FILE in the URI (or, to skip the check, tlsAllowInvalidCertificates=true, which the plan warns about)".into()
    } else if e.tls() {
        "TLS is on for this connection (tls=true, or mongodb+srv://): if the server does not speak TLS, add ?tls=false; if its certificate is self-signed, add &tlsCAFile=/path/ca.pem (or tlsAllowInvalidCertificates=true)".into()
    } else {
        "if the server requires TLS, add ?tls=true to the URI (Tutor: MONGODB_USE_SSL: true)".into()
    }
}

/// The server's error code of a failed command, if the server answered with one.
pub fn error_code(e: &DriverError) -> Option<i32> {
    match &*e.kind {
        DriverKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Turn a driver error into a [`StoreError`] that says what to do.
pub fn map_error(side: Side, endpoint: &MongoEndpoint, e: DriverError) -> StoreError {
    let address = endpoint.address();
    let auth_hint = || {
        format!(
            "check the {side} user and password ({}) and the auth source: offload authenticated {} against database `{}` (?authSource=, Tutor's MONGODB_AUTH_SOURCE), which must be the database the user was created in, usually admin",
            password_places(side),
            endpoint.user.as_deref().map(|u| format!("as `{u}`")).unwrap_or_else(|| "without a user".into()),
            endpoint.auth_source()
        )
    };
    let retry_hint =
        "offload retries this on its own; if it keeps failing, check the server's load and logs";
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let (kind, detail, hint) = match &*e.kind {
        DriverKind::Authentication { message, .. } => (
            ErrorKind::Auth,
            format!("authentication failed: {message}"),
            auth_hint(),
        ),
        DriverKind::Command(c) => {
            let detail = format!("server error {} ({}): {}", c.code, c.code_name, c.message);
            match c.code {
                18 => (ErrorKind::Auth, detail, auth_hint()),
                13 | 8000 => (
                    ErrorKind::Auth,
                    detail,
                    format!("grant the {side} user the role the server names (source: read on the databases and clusterMonitor; target: readWrite and dbAdmin, or restore), or connect as a user that has it"),
                ),
                239 | 246 => (
                    ErrorKind::Unsupported,
                    detail,
                    "the snapshot is older than the server keeps history for: raise minSnapshotHistoryWindowInSeconds on the source for the copy's duration, or copy without --mongodb-snapshot after stopping the platform's writers".into(),
                ),
                6 | 7 | 43 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435
                | 13436 => (ErrorKind::Transient, detail, retry_hint.into()),
                _ if e.contains_label("RetryableWriteError")
                    || e.contains_label("TransientTransactionError") =>
                {
                    (ErrorKind::Transient, detail, retry_hint.into())
                }
                _ => (
                    ErrorKind::Query,
                    detail,
                    "fix the cause the server names, then run the command again (a stopped copy continues with --resume)".into(),
                ),
            }
        }
        DriverKind::Write(WriteFailure::WriteConcernError(w)) => (
            ErrorKind::Transient,
            format!("write concern error {}: {}", w.code, w.message),
            retry_hint.into(),
        ),
        DriverKind::Write(WriteFailure::WriteError(w)) => (
            ErrorKind::Query,
            format!("write error {}: {}", w.code, w.message),
            if w.code == 11000 {
                "a document with this _id is already on the target outside offload's knowledge: something else writes there; stop it, then run again with --resume".into()
            } else {
                "fix the cause the server names, then run again with --resume".into()
            },
        ),
        DriverKind::InsertMany(m) => {
            let first = m
                .write_errors
                .as_ref()
                .and_then(|w| w.first())
                .map(|w| format!("write error {}: {}", w.code, w.message))
                .or_else(|| {
                    m.write_concern_error
                        .as_ref()
                        .map(|w| format!("write concern error {}: {}", w.code, w.message))
                })
                .unwrap_or_else(|| text.clone());
            let concern_only = m.write_errors.as_ref().is_none_or(|w| w.is_empty());
            (
                if concern_only {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Query
                },
                format!("insert failed: {first}"),
                "fix the cause the server names, then run again with --resume".into(),
            )
        }
        DriverKind::InvalidArgument { message, .. } => (
            ErrorKind::Input,
            format!("bad {side} URI or option: {message}"),
            "expected mongodb://user:password@host:port/?authSource=admin (or mongodb+srv://user@name)"
                .into(),
        ),
        DriverKind::InvalidTlsConfig { message, .. } => (
            ErrorKind::Input,
            format!("bad TLS settings for the {side}: {message}"),
            "check tlsCAFile / tlsCertificateKeyFile in the URI".into(),
        ),
        DriverKind::DnsResolve { message, .. } => (
            ErrorKind::Connect,
            format!("cannot resolve the {side} host: {message}"),
            "check the host name (a mongodb+srv:// name needs SRV and TXT DNS records)".into(),
        ),
        DriverKind::ServerSelection { message, .. } | DriverKind::ConnectionPoolCleared { message, .. } => {
            let lower_msg = message.to_ascii_lowercase();
            if lower_msg.contains("authentication") || lower_msg.contains("auth error") {
                (
                    ErrorKind::Auth,
                    format!("authentication failed: {message}"),
                    auth_hint(),
                )
            } else if lower_msg.contains("replica set") || lower_msg.contains("setname") {
                (
                    ErrorKind::Input,
                    format!("cannot find the {side} replica set: {message}"),
                    "check replicaSet= in the URI (Tutor: MONGODB_REPLICA_SET): the server must be a member of that set; for a standalone server leave it out".into(),
                )
            } else {
                let tlsish = ["tls", "ssl", "certificate", "handshake", "corrupt", "eof", "closed", "reset", "unexpected end"]
                    .iter()
                    .any(|w| lower_msg.contains(w));
                (
                    ErrorKind::Connect,
                    format!("cannot talk to the {side} server: {message}"),
                    format!(
                        "check that it is running and reachable from this machine, and that host and port are right{}{}",
                        if tlsish { format!("; {}", tls_hint(endpoint, message)) } else { String::new() },
                        if side == Side::Source {
                            " (Tutor's `mongodb` host is only reachable inside its Docker network: pass --from-mongodb with an address this machine can reach)"
                        } else {
                            ""
                        }
                    ),
                )
            }
        }
        DriverKind::Io(io) => (
            ErrorKind::Connect,
            format!("cannot talk to the {side} server: {io}"),
            format!("check that it is running and reachable; {}", tls_hint(endpoint, &io.to_string())),
        ),
        _ if lower.contains("tls") || lower.contains("certificate") => (
            ErrorKind::Connect,
            format!("{side}: {text}"),
            tls_hint(endpoint, &text),
        ),
        _ => (ErrorKind::Query, format!("{side}: {text}"), String::new()),
    };
    let detail = match &endpoint.password {
        Some(p) if !p.is_empty() => detail.replace(p.expose(), "********"),
        _ => detail,
    };
    StoreError::new(StoreKind::Mongodb, address, kind, detail, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_checked_and_skipping_the_check_is_warned_about() {
        let err = |uri: &str| MongoEndpoint::parse(uri).unwrap_err();
        assert!(err("mongodb://h/?tls=true&tlsCAFile=/nonexistent/ca.pem")
            .contains("tlsCAFile: cannot read"));
        assert!(err("mongodb://h/?tls=yes").contains("tls=yes is not true or false"));
        assert!(err("mongodb://h/?tlsCAFile=/etc/hostname").contains("TLS connections only"));
        assert!(
            err("mongodb://h/?tls=true&tlsAllowInvalidHostnames=true").contains("not supported")
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = MongoEndpoint::parse(&format!("mongodb://h/?tls=true&tlsCAFile={}", ca.display()))
            .unwrap();
        assert!(e.tls() && e.tls_warning().is_none());
        for key in ["tlsAllowInvalidCertificates", "tlsInsecure"] {
            let e = MongoEndpoint::parse(&format!("mongodb://h/?tls=true&{key}=true")).unwrap();
            let w = e.tls_warning().unwrap();
            assert!(w.contains(key) && w.contains("tlsCAFile=FILE"), "{w}");
        }
        let srv =
            MongoEndpoint::parse("mongodb+srv://u@cluster.example.org/?tlsInsecure=true").unwrap();
        assert!(srv.tls_warning().is_some());
        assert!(
            MongoEndpoint::parse("mongodb://h/?tls=true&tlsInsecure=false")
                .unwrap()
                .tls_warning()
                .is_none()
        );
    }

    #[test]
    fn parses_uris_and_hides_the_password() {
        let e = MongoEndpoint::parse(
            "mongodb://app%40x:p%40ss:w@db1:27018,db2/openedx?replicaSet=rs0&authSource=admin",
        )
        .unwrap();
        assert_eq!(e.user.as_deref(), Some("app@x"));
        assert_eq!(e.password.as_ref().unwrap().expose(), "p@ss:w");
        assert_eq!(e.address(), "db1:27018,db2:27017");
        assert_eq!(e.path_db.as_deref(), Some("openedx"));
        assert_eq!(e.option("replicaset"), Some("rs0"));
        assert_eq!(e.auth_source(), "admin");
        assert!(!e.tls());
        let public = e.public_url();
        assert_eq!(
            public,
            "mongodb://app%40x@db1:27018,db2/openedx?replicaSet=rs0&authSource=admin"
        );
        assert!(!format!("{e:?}").contains("p@ss"));

        let s =
            MongoEndpoint::parse("mongodb+srv://u@cluster0.example.net/?retryWrites=true").unwrap();
        assert!(s.srv && s.tls());
        assert_eq!(s.address(), "cluster0.example.net");
        assert_eq!(s.auth_source(), "admin");
        assert!(MongoEndpoint::parse("mysql://x").is_err());
        assert!(MongoEndpoint::parse("mongodb+srv://h:27017").is_err());
        let plain = MongoEndpoint::parse("mongodb://127.0.0.1:27117").unwrap();
        assert_eq!(plain.public_url(), "mongodb://127.0.0.1:27117/");
        assert!(MongoEndpoint::parse("mongodb://h/?tls=true").unwrap().tls());
    }

    use crate::resolve::test_support::RESERVED_USERS as USERS;

    #[test]
    fn the_public_url_parses_back_to_the_same_endpoint() {
        for user in USERS {
            for (srv, hosts) in [
                (false, "db1.example.org:27017"),
                (false, "a:27017,b:27018,[::1]:27019"),
                (false, "solo"),
                (true, "cluster0.example.org"),
            ] {
                let e = MongoEndpoint {
                    srv,
                    user: Some(user.to_string()),
                    password: None,
                    hosts: hosts.into(),
                    path_db: Some("ad min".into()),
                    options: vec![
                        ("authSource".into(), "admin".into()),
                        ("replicaSet".into(), "rs0".into()),
                    ],
                };
                let url = e.public_url();
                assert_eq!(MongoEndpoint::parse(&url).as_ref(), Ok(&e), "{url}");
            }
        }
    }

    #[test]
    fn bad_ports_hosts_and_raw_reserved_characters_are_refused() {
        for bad in [
            "mongodb://h:0",
            "mongodb://h:65536",
            "mongodb://h:abc",
            "mongodb://a:27017,:27018",
            "mongodb://a:27017,,b",
            "mongodb://u@:27017",
            "mongodb://",
            "mongodb://[::1",
            "mongodb+srv://a:27017",
            "junk",
        ] {
            assert!(MongoEndpoint::parse(bad).is_err(), "{bad}");
        }
        let err = MongoEndpoint::parse("mongodb://u:se/cret@h:27017").unwrap_err();
        assert!(
            err.contains("percent-encode") && err.contains("/ as %2F"),
            "{err}"
        );
        assert!(!err.contains("se/cret"), "{err}");
    }

    #[test]
    fn a_raw_slash_in_the_user_part_is_refused_without_showing_the_password() {
        for uri in [
            "mongodb://u/ser:s3cret@host/",
            "mongodb://u?ser:s3cret@host:27017/db",
        ] {
            let err = MongoEndpoint::parse(uri).unwrap_err();
            assert!(err.contains("percent-encode"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}

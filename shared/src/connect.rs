//! Connection settings that build their own clients, so no binary repeats connection code.

use std::{path::PathBuf, time::Duration};

use redis::IntoConnectionInfo;

use crate::{
    redis_conn::RedisConnection,
    settings::{ConfigError, Env, Secret},
};

/// How the NATS client proves who it is. At most one method may be configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `STOCKFLOW_NATS_USER` and `STOCKFLOW_NATS_PASSWORD(_FILE)`.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// `STOCKFLOW_NATS_TOKEN(_FILE)`.
    Token(Secret),
    /// `STOCKFLOW_NATS_NKEY(_FILE)`: a user nkey seed (`SU...`); the server knows its public key.
    NKey(Secret),
    /// `STOCKFLOW_NATS_CREDS_FILE`: a `.creds` file (user JWT + nkey seed), for servers in
    /// operator (JWT) mode.
    Creds(PathBuf),
}

impl NatsAuth {
    /// The variables this method was configured with, for error messages (never the values).
    pub fn variables(&self) -> &'static str {
        match self {
            Self::None => "no credentials",
            Self::UserPassword { .. } => "STOCKFLOW_NATS_USER/STOCKFLOW_NATS_PASSWORD",
            Self::Token(_) => "STOCKFLOW_NATS_TOKEN",
            Self::NKey(_) => "STOCKFLOW_NATS_NKEY",
            Self::Creds(_) => "STOCKFLOW_NATS_CREDS_FILE",
        }
    }

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let user = env.raw("STOCKFLOW_NATS_USER");
        let password = env.secret("STOCKFLOW_NATS_PASSWORD", "STOCKFLOW_NATS_PASSWORD_FILE")?;
        let token = env.secret("STOCKFLOW_NATS_TOKEN", "STOCKFLOW_NATS_TOKEN_FILE")?;
        let nkey = env.secret("STOCKFLOW_NATS_NKEY", "STOCKFLOW_NATS_NKEY_FILE")?;
        let creds = env.readable_path("STOCKFLOW_NATS_CREDS_FILE")?;
        let mut methods = Vec::new();
        match (user, password) {
            (Some(user), Some(password)) => methods.push(Self::UserPassword { user, password }),
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid {
                    var: "STOCKFLOW_NATS_USER",
                    reason: "set both STOCKFLOW_NATS_USER and STOCKFLOW_NATS_PASSWORD, or neither"
                        .into(),
                })
            }
        }
        methods.extend(token.map(Self::Token));
        if let Some(seed) = nkey {
            // Checked here: the client would otherwise log the problem and connect without it.
            let valid = nkeys::KeyPair::from_seed(seed.expose().trim())
                .is_ok_and(|pair| pair.key_pair_type() == nkeys::KeyPairType::User);
            if !valid {
                return Err(ConfigError::Invalid {
                    var: "STOCKFLOW_NATS_NKEY",
                    reason: "is not a user nkey seed (a line starting with SU)".into(),
                });
            }
            methods.push(Self::NKey(Secret::new(seed.expose().trim())));
        }
        methods.extend(creds.map(Self::Creds));
        match methods.len() {
            0 => Ok(Self::None),
            1 => Ok(methods.remove(0)),
            _ => Err(ConfigError::Invalid {
                var: methods[0].variables(),
                reason: format!(
                    "several NATS auth methods are set ({}); set only one",
                    methods
                        .iter()
                        .map(Self::variables)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

/// TLS towards NATS or Redis: a private CA and an optional client certificate (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CA(s) that signed the server certificate; the system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and its key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Reads `<prefix>_TLS_CA_FILE`, `<prefix>_TLS_CERT_FILE` and `<prefix>_TLS_KEY_FILE`
    /// (the variable names are passed whole so errors can name them).
    fn from_env(
        env: &Env,
        ca_var: &'static str,
        cert_var: &'static str,
        key_var: &'static str,
    ) -> Result<Self, ConfigError> {
        let ca_file = env.readable_path(ca_var)?;
        let client_cert = match (env.readable_path(cert_var)?, env.readable_path(key_var)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    var: cert_var,
                    reason: format!("set both {cert_var} and {key_var}, or neither"),
                })
            }
        };
        Ok(Self {
            ca_file,
            client_cert,
        })
    }

    /// True when any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some()
    }
}

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URLs (`STOCKFLOW_NATS_URL`, comma-separated).
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS files (`STOCKFLOW_NATS_TLS_*`); setting any requires TLS.
    pub tls: TlsFiles,
    /// Name the connection shows in the server's monitoring.
    pub client_name: String,
}

impl NatsSettings {
    /// Reads `STOCKFLOW_NATS_*`.
    pub fn from_env(env: &Env, client_name: &str) -> Result<Self, ConfigError> {
        let urls: Vec<String> = env
            .string("STOCKFLOW_NATS_URL", "nats://127.0.0.1:4222")
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_NATS_URL",
                reason: "lists no URL".into(),
            });
        }
        for url in &urls {
            let invalid = |reason: String| ConfigError::Invalid {
                var: "STOCKFLOW_NATS_URL",
                reason: format!("{:?} is not a NATS URL: {reason}", redact_url(url)),
            };
            check_nats_url(url).map_err(invalid)?;
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| invalid(e.to_string()))?;
        }
        Ok(Self {
            urls,
            auth: NatsAuth::from_env(env)?,
            tls: TlsFiles::from_env(
                env,
                "STOCKFLOW_NATS_TLS_CA_FILE",
                "STOCKFLOW_NATS_TLS_CERT_FILE",
                "STOCKFLOW_NATS_TLS_KEY_FILE",
            )?,
            client_name: client_name.to_owned(),
        })
    }

    /// Local defaults, for tests and tools.
    pub fn local(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            auth: NatsAuth::None,
            tls: TlsFiles::default(),
            client_name: "stockflow".into(),
        }
    }

    /// Connects; the client reconnects by itself forever after the first connection. A failure
    /// names the servers (without credentials) and the variables the credentials came from.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        use anyhow::Context as _;
        let servers = self
            .urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(move |event| {
                let servers = servers.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%servers, "nats connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%servers, "nats disconnected")
                        }
                        // One per reconnect try while a server is down: not worth a line each.
                        async_nats::Event::ClientError(e) => {
                            tracing::debug!(error = %e, "nats client error");
                        }
                        other => tracing::info!(event = %other, "nats event"),
                    }
                }
            });
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::UserPassword { user, password } => {
                options = options.user_and_password(user.clone(), password.expose().to_owned());
            }
            NatsAuth::Token(token) => options = options.token(token.expose().to_owned()),
            NatsAuth::NKey(seed) => options = options.nkey(seed.expose().to_owned()),
            NatsAuth::Creds(path) => {
                // The parse error of async-nats never quotes the file's content.
                options = options.credentials_file(path).await.with_context(|| {
                    format!("reading STOCKFLOW_NATS_CREDS_FILE {}", path.display())
                })?;
            }
        }
        if let Some(ca) = &self.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls.is_set() {
            options = options.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .context("parsing STOCKFLOW_NATS_URL")?;
        options.connect(urls).await.map_err(|error| {
            NatsConnectError {
                servers: self
                    .urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(","),
                auth: self.auth.clone(),
                error,
            }
            .into()
        })
    }
}

/// Why [`NatsSettings::connect`] failed: the servers (without credentials), the variables the
/// credentials came from, the client's error and what to check.
///
/// async-nats writes an error's cause into its message and returns it again as its `source()`,
/// so the cause would appear twice in an `{:#}` chain: this type shows the message once and has
/// no source. [`Self::kind`] tells a server not there yet from a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {servers}{}: {error}; {}", self.credentials(), self.hint())]
pub struct NatsConnectError {
    /// The URLs, redacted.
    servers: String,
    /// How the client authenticated.
    auth: NatsAuth,
    /// The client's error.
    error: async_nats::ConnectError,
}

impl NatsConnectError {
    /// What went wrong, for callers that branch on it.
    pub fn kind(&self) -> async_nats::ConnectErrorKind {
        self.error.kind()
    }

    /// ` with STOCKFLOW_NATS_TOKEN`, or nothing without credentials (never their value).
    fn credentials(&self) -> String {
        match self.auth {
            NatsAuth::None => String::new(),
            _ => format!(" with {}", self.auth.variables()),
        }
    }

    /// What to check, by the kind of failure.
    fn hint(&self) -> &'static str {
        use async_nats::ConnectErrorKind as Kind;
        match self.error.kind() {
            Kind::Io | Kind::TimedOut | Kind::Dns | Kind::MaxReconnects => {
                "check that nats-server runs there and that the URL is right"
            }
            Kind::AuthorizationViolation | Kind::Authentication => {
                "check the credentials the server expects (STOCKFLOW_NATS_USER/PASSWORD, TOKEN, \
                 NKEY or CREDS_FILE)"
            }
            Kind::Tls => {
                "check the URL's scheme and the TLS files (STOCKFLOW_NATS_TLS_CA_FILE, \
                 STOCKFLOW_NATS_TLS_CERT_FILE, STOCKFLOW_NATS_TLS_KEY_FILE)"
            }
            _ => "check STOCKFLOW_NATS_URL and the server's configuration",
        }
    }
}

/// Checks what the client would otherwise guess at or fail on later with an error that names
/// no variable: an explicit scheme (the client reads `garbage` as `nats://garbage:4222` and fails
/// at connect with a DNS error), a host, and a port when one is written.
fn check_nats_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("no scheme: write nats://host:4222 (or tls://, ws://, wss://)".into());
    };
    if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
        return Err(format!("scheme {scheme:?} is none of nats, tls, ws, wss"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        // An IPv6 address: [::1]:4222.
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| "an IPv6 host needs its closing ]".to_owned())?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{host:?} is not an IPv6 address"));
            }
            (host, after.strip_prefix(':'))
        }
        None => {
            let (host, port) = match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            {
                return Err(format!("host {host:?} is not a host name or IP address"));
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("port {port:?} is not a number in 1..=65535"));
        }
    }
    Ok(())
}

/// The nodes of `STOCKFLOW_REDIS_URL`, parsed once when the settings are read: one server, or
/// the seed nodes of a Redis Cluster. A URL may carry credentials, so `Debug` shows only the
/// addresses.
#[derive(Clone, Default)]
struct RedisNodes(Vec<redis::ConnectionInfo>);

impl RedisNodes {
    /// Parses each comma-separated URL; the error never shows credentials.
    fn parse(urls: &str) -> Result<Self, String> {
        urls.split(',')
            .map(str::trim)
            .map(|one| {
                // The client's error says only `InvalidClientConfig`: say what a URL looks like.
                one.into_connection_info().map_err(|_| {
                    format!(
                        "{:?} is not a Redis URL: write redis://host:6379 (rediss:// for TLS)",
                        redact_url(one)
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The first node: the server itself, or the first seed of a cluster.
    fn first(&self) -> anyhow::Result<&redis::ConnectionInfo> {
        self.0
            .first()
            .ok_or_else(|| anyhow::anyhow!("STOCKFLOW_REDIS_URL is not a Redis URL"))
    }
}

impl std::fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|info| info.addr().to_string()))
            .finish()
    }
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (`STOCKFLOW_REDIS_URL`), or comma-separated seed nodes of a
    /// Redis Cluster, as written (for logs, redacted); may carry credentials, so it is kept as a
    /// secret.
    url: Secret,
    /// `url`, parsed.
    nodes: RedisNodes,
    /// ACL user.
    pub username: Option<String>,
    /// Password (for the ACL user, or the default user).
    pub password: Option<Secret>,
    /// TLS files (`STOCKFLOW_REDIS_TLS_*`); they need a `rediss://` URL.
    pub tls: TlsFiles,
    /// Redis Cluster (`STOCKFLOW_REDIS_CLUSTER`): commands follow their key's slot.
    pub cluster: bool,
    /// Prefix of every key (`STOCKFLOW_KEY_PREFIX`).
    pub key_prefix: String,
}

impl RedisSettings {
    /// Reads `STOCKFLOW_REDIS_*` and `STOCKFLOW_KEY_PREFIX`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.string("STOCKFLOW_REDIS_URL", "redis://127.0.0.1:6379");
        let cluster: bool = env.parse("STOCKFLOW_REDIS_CLUSTER", false)?;
        let nodes = RedisNodes::parse(&url).map_err(|reason| ConfigError::Invalid {
            var: "STOCKFLOW_REDIS_URL",
            reason,
        })?;
        if nodes.0.len() > 1 && !cluster {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_REDIS_URL",
                reason: "several URLs are the seed nodes of a Redis Cluster: set \
                         STOCKFLOW_REDIS_CLUSTER=true"
                    .into(),
            });
        }
        let tls = TlsFiles::from_env(
            env,
            "STOCKFLOW_REDIS_TLS_CA_FILE",
            "STOCKFLOW_REDIS_TLS_CERT_FILE",
            "STOCKFLOW_REDIS_TLS_KEY_FILE",
        )?;
        let first_is_tls = nodes
            .0
            .first()
            .is_some_and(|info| matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }));
        if tls.is_set() && !first_is_tls {
            return Err(ConfigError::Invalid {
                var: if tls.ca_file.is_some() {
                    "STOCKFLOW_REDIS_TLS_CA_FILE"
                } else {
                    "STOCKFLOW_REDIS_TLS_CERT_FILE"
                },
                reason: "TLS files need a rediss:// STOCKFLOW_REDIS_URL".into(),
            });
        }
        let key_prefix = env.string("STOCKFLOW_KEY_PREFIX", "sf");
        if key_prefix.is_empty()
            || !key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_KEY_PREFIX",
                reason: format!("{key_prefix:?} may only hold letters, digits and - _ . :"),
            });
        }
        Ok(Self {
            url: Secret::new(url),
            nodes,
            username: env.raw("STOCKFLOW_REDIS_USERNAME"),
            password: env.secret("STOCKFLOW_REDIS_PASSWORD", "STOCKFLOW_REDIS_PASSWORD_FILE")?,
            tls,
            cluster,
            key_prefix,
        })
    }

    /// Local defaults, for tests and tools. A `url` that does not parse fails at connect.
    pub fn local(url: &str, key_prefix: &str) -> Self {
        Self {
            url: Secret::new(url),
            nodes: RedisNodes::parse(url).unwrap_or_default(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            cluster: false,
            key_prefix: key_prefix.to_owned(),
        }
    }

    /// `STOCKFLOW_REDIS_URL` without credentials (each URL of a cluster's list), fit for logs
    /// and errors.
    pub fn redacted_url(&self) -> String {
        self.url
            .expose()
            .split(',')
            .map(|u| redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A connection that reconnects by itself; one multiplexed connection (per cluster node)
    /// serves every task.
    pub async fn connect(&self) -> anyhow::Result<RedisConnection> {
        if self.cluster {
            let client = self.cluster_client()?;
            let handle = crate::redis_conn::ClusterHandle::connect(client)
                .await
                .map_err(|e| self.failed("connecting to the Redis Cluster", e))?;
            return Ok(RedisConnection::Cluster(handle));
        }
        let client = self.client()?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let manager = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| self.failed("connecting to Redis", e))?;
        Ok(RedisConnection::Single(manager))
    }

    /// A Redis Cluster client seeded with every URL of `STOCKFLOW_REDIS_URL`.
    fn cluster_client(&self) -> anyhow::Result<redis::cluster::ClusterClient> {
        self.nodes.first()?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.nodes.0.clone())
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(5))
            .retries(6);
        if let Some(user) = &self.username {
            builder = builder.username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password.expose());
        }
        if self.tls.is_set() {
            builder = builder.certs(self.tls_certificates()?);
        }
        Ok(builder
            .build()
            .map_err(|e| self.failed("opening Redis Cluster client", e))?)
    }

    /// The client these settings describe (TLS and credentials applied), not yet connected.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        let info = self.connection_info()?;
        let client = if self.tls.is_set() {
            redis::Client::build_with_tls(info, self.tls_certificates()?)
        } else {
            redis::Client::open(info)
        };
        Ok(client.map_err(|e| self.failed("opening Redis client", e))?)
    }

    /// The CA and client certificate of `STOCKFLOW_REDIS_TLS_*`, read from their files.
    fn tls_certificates(&self) -> anyhow::Result<redis::TlsCertificates> {
        use anyhow::Context as _;
        let read = |var: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {var} {}", path.display()))
        };
        let root_cert = match &self.tls.ca_file {
            Some(path) => Some(read("STOCKFLOW_REDIS_TLS_CA_FILE", path)?),
            None => None,
        };
        let client_tls = match &self.tls.client_cert {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("STOCKFLOW_REDIS_TLS_CERT_FILE", cert)?,
                client_key: read("STOCKFLOW_REDIS_TLS_KEY_FILE", key)?,
            }),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }

    /// `error` of `what`, described without credentials.
    fn failed(&self, what: &str, error: redis::RedisError) -> RedisConnectError {
        RedisConnectError {
            what: self.describe(what),
            error,
        }
    }

    /// `what` at the redacted URL, naming the variables credentials and TLS came from.
    fn describe(&self, what: &str) -> String {
        let mut text = format!("{what} at {}", self.redacted_url());
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => text.push_str(&format!(
                " as user {user:?} (STOCKFLOW_REDIS_USERNAME/STOCKFLOW_REDIS_PASSWORD)"
            )),
            (Some(user), None) => {
                text.push_str(&format!(" as user {user:?} (STOCKFLOW_REDIS_USERNAME)"));
            }
            (None, Some(_)) => text.push_str(" with STOCKFLOW_REDIS_PASSWORD"),
            (None, None) => {}
        }
        if self.tls.ca_file.is_some() {
            text.push_str(", trusting STOCKFLOW_REDIS_TLS_CA_FILE");
        }
        text
    }

    fn connection_info(&self) -> anyhow::Result<redis::ConnectionInfo> {
        let info = self.nodes.first()?.clone();
        let mut redis_info = info.redis_settings().clone();
        if let Some(user) = &self.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password.expose());
        }
        Ok(info.set_redis_settings(redis_info))
    }
}

/// Why connecting to Redis (or opening its client) failed: where, the client's error once, and
/// what to check.
///
/// The Redis client writes an I/O error's text into its own message and returns the I/O error
/// again as its `source()`, and a reply it cannot parse as several lines: this type shows the
/// cause once, on one line, and has no source. [`Self::kind`] tells a server not there yet from a
/// configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}; {}", self.cause(), self.hint())]
pub struct RedisConnectError {
    /// What was done, where (redacted) and with which variables' credentials.
    what: String,
    /// The client's error.
    error: redis::RedisError,
}

impl RedisConnectError {
    /// What went wrong, for callers that branch on it.
    pub fn kind(&self) -> redis::ErrorKind {
        self.error.kind()
    }

    /// The client's error in one line; a reply that is not Redis' is said so.
    fn cause(&self) -> String {
        use redis::ErrorKind;
        match self.error.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported => {
                "the server's reply is not Redis'".to_owned()
            }
            _ => {
                let text = self.error.to_string();
                text.lines().next().unwrap_or_default().trim().to_owned()
            }
        }
    }

    /// What to check, by the kind of failure.
    fn hint(&self) -> &'static str {
        use redis::{ErrorKind, ServerErrorKind};
        match self.error.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported => {
                "check that the URL's port is a Redis server's (6379 by default)"
            }
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => {
                "check that redis-server runs there and that the URL is right"
            }
            ErrorKind::AuthenticationFailed => {
                "check STOCKFLOW_REDIS_USERNAME and STOCKFLOW_REDIS_PASSWORD"
            }
            ErrorKind::InvalidClientConfig => "check the URL and STOCKFLOW_REDIS_TLS_* files",
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown,
            ) => "the server does not serve yet: wait for it to load, or for the cluster to cover every slot",
            ErrorKind::Server(ServerErrorKind::NoPerm) => {
                "check the ACL of STOCKFLOW_REDIS_USERNAME"
            }
            _ => "check STOCKFLOW_REDIS_URL and the server's configuration",
        }
    }
}

/// A URL with any `user:password@` part replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://[redacted]@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379/0"),
            "redis://[redacted]@redis:6379/0"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn bad_urls_name_the_variable_and_hide_the_password() {
        let env = Env::from_pairs([("STOCKFLOW_REDIS_URL", "http://u:s3cret@x")]);
        let err = RedisSettings::from_env(&env).expect_err("not redis");
        let text = err.to_string();
        assert!(text.starts_with("STOCKFLOW_REDIS_URL:"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("redis://host:6379"),
            "says what to write: {text}"
        );
        assert!(!text.contains("InvalidClientConfig"), "{text}");
    }

    #[test]
    fn the_redis_url_is_parsed_once_and_never_printed_with_its_password() {
        let env = Env::from_pairs([
            (
                "STOCKFLOW_REDIS_URL",
                "redis://app:s3cret@a:6379, redis://b:6380",
            ),
            ("STOCKFLOW_REDIS_CLUSTER", "true"),
        ]);
        let settings = RedisSettings::from_env(&env).expect("two seeds");
        assert_eq!(settings.nodes.0.len(), 2);
        assert!(settings.client().is_ok());
        let shown = format!("{settings:?} {}", settings.redacted_url());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("a:6379") && shown.contains("b:6380"),
            "{shown}"
        );
        let unparsed = RedisSettings::local("http://x", "sf");
        let err = unparsed.client().expect_err("not a Redis URL");
        assert!(err.to_string().contains("STOCKFLOW_REDIS_URL"), "{err}");
    }

    #[test]
    fn one_nats_auth_method_at_a_time() {
        let env = Env::from_pairs([
            ("STOCKFLOW_NATS_TOKEN", "t0k-1"),
            ("STOCKFLOW_NATS_USER", "app"),
            ("STOCKFLOW_NATS_PASSWORD", "pw-1"),
        ]);
        let text = NatsSettings::from_env(&env, "t")
            .expect_err("two methods")
            .to_string();
        assert!(text.contains("STOCKFLOW_NATS_TOKEN"), "{text}");
        assert!(!text.contains("t0k-1") && !text.contains("pw-1"), "{text}");
    }

    #[test]
    fn a_bad_nkey_seed_fails_at_start_without_showing_it() {
        let account_seed = nkeys::KeyPair::new_account().seed().expect("seed");
        for seed in ["SUnot-a-seed", account_seed.as_str()] {
            let env = Env::from_pairs([("STOCKFLOW_NATS_NKEY", seed)]);
            let text = NatsSettings::from_env(&env, "t")
                .expect_err("not a user seed")
                .to_string();
            assert!(text.starts_with("STOCKFLOW_NATS_NKEY:"), "{text}");
            assert!(!text.contains(seed), "{text}");
        }
        let user_seed = nkeys::KeyPair::new_user().seed().expect("seed");
        let env = Env::from_pairs([("STOCKFLOW_NATS_NKEY", user_seed.as_str())]);
        let settings = NatsSettings::from_env(&env, "t").expect("a user seed");
        assert!(matches!(settings.auth, NatsAuth::NKey(_)));
        assert!(!format!("{settings:?}").contains(&user_seed));
    }

    #[test]
    fn tls_files_must_exist_and_come_in_pairs() {
        let env = Env::from_pairs([("STOCKFLOW_NATS_TLS_CA_FILE", "/nonexistent/ca.pem")]);
        let err = NatsSettings::from_env(&env, "t").expect_err("missing file");
        assert!(
            err.to_string().starts_with("STOCKFLOW_NATS_TLS_CA_FILE:"),
            "{err}"
        );
        let this_file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/connect.rs");
        let env = Env::from_pairs([
            ("STOCKFLOW_REDIS_URL", "rediss://127.0.0.1:6380"),
            ("STOCKFLOW_REDIS_TLS_CERT_FILE", this_file),
        ]);
        let err = RedisSettings::from_env(&env).expect_err("cert without key");
        assert!(
            err.to_string()
                .starts_with("STOCKFLOW_REDIS_TLS_CERT_FILE:"),
            "{err}"
        );
    }

    #[test]
    fn redis_tls_files_need_a_rediss_url() {
        let this_file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/connect.rs");
        let env = Env::from_pairs([
            ("STOCKFLOW_REDIS_URL", "redis://127.0.0.1:6379"),
            ("STOCKFLOW_REDIS_TLS_CA_FILE", this_file),
        ]);
        let err = RedisSettings::from_env(&env).expect_err("plain url");
        assert!(
            err.to_string().starts_with("STOCKFLOW_REDIS_TLS_CA_FILE:"),
            "{err}"
        );
        let env = Env::from_pairs([
            ("STOCKFLOW_REDIS_URL", "rediss://127.0.0.1:6380"),
            ("STOCKFLOW_REDIS_TLS_CA_FILE", this_file),
        ]);
        assert!(RedisSettings::from_env(&env).is_ok());
    }

    #[test]
    fn nats_urls_are_checked_at_start_and_errors_name_the_variable() {
        for good in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com:4443",
            "nats://nats",
            "ws://127.0.0.1:8080/nats",
            "wss://[::1]:443",
            "nats://a:4222, nats://b:4222,nats://c:4222",
        ] {
            let env = Env::from_pairs([("STOCKFLOW_NATS_URL", good)]);
            assert!(NatsSettings::from_env(&env, "t").is_ok(), "{good}");
        }
        for bad in [
            "garbage",
            "127.0.0.1:4222",
            "http://127.0.0.1:4222",
            "nats://",
            "nats://:4222",
            "nats://127.0.0.1:port",
            "nats://127.0.0.1:70000",
            "nats://127.0.0.1:0",
            "nats://host name:4222",
            "nats://[::1:4222",
            "nats://a:4222,garbage",
            ",",
            "nats://app:pw-7f1c@:4222",
        ] {
            let env = Env::from_pairs([("STOCKFLOW_NATS_URL", bad)]);
            let text = NatsSettings::from_env(&env, "t")
                .expect_err(bad)
                .to_string();
            assert!(text.starts_with("STOCKFLOW_NATS_URL:"), "{bad}: {text}");
            assert!(!text.contains("pw-7f1c"), "{bad}: {text}");
        }
    }

    #[test]
    fn nats_user_needs_a_password() {
        let env = Env::from_pairs([("STOCKFLOW_NATS_USER", "app")]);
        let err = NatsSettings::from_env(&env, "t").expect_err("no password");
        assert!(err.to_string().starts_with("STOCKFLOW_NATS_USER:"), "{err}");
    }
}

//! Connection settings that build their own clients, so no binary repeats connection code.

use std::{path::PathBuf, time::Duration};

use redis::IntoConnectionInfo;

use crate::settings::{ConfigError, Env, Secret};

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URLs (`STOCKFLOW_NATS_URL`, comma-separated).
    pub urls: Vec<String>,
    /// A `.creds` file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// User for user/password auth.
    pub user: Option<String>,
    /// Password for user/password auth.
    pub password: Option<Secret>,
    /// Token auth.
    pub token: Option<Secret>,
    /// CA bundle; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
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
        for url in &urls {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConfigError::Invalid {
                    var: "STOCKFLOW_NATS_URL",
                    reason: format!("{:?} is not a NATS URL: {e}", redact_url(url)),
                })?;
        }
        let user = env.raw("STOCKFLOW_NATS_USER");
        let password = env.secret("STOCKFLOW_NATS_PASSWORD", "STOCKFLOW_NATS_PASSWORD_FILE")?;
        if user.is_some() != password.is_some() {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_NATS_USER",
                reason: "set both STOCKFLOW_NATS_USER and STOCKFLOW_NATS_PASSWORD, or neither"
                    .into(),
            });
        }
        Ok(Self {
            urls,
            creds_file: env.path("STOCKFLOW_NATS_CREDS_FILE"),
            user,
            password,
            token: env.secret("STOCKFLOW_NATS_TOKEN", "STOCKFLOW_NATS_TOKEN_FILE")?,
            tls_ca_file: env.path("STOCKFLOW_NATS_TLS_CA_FILE"),
            client_name: client_name.to_owned(),
        })
    }

    /// Local defaults, for tests and tools.
    pub fn local(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            client_name: "stockflow".into(),
        }
    }

    /// Connects; the client reconnects by itself forever after the first connection.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        use anyhow::Context as _;
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    other => tracing::info!(event = %other, "nats event"),
                }
            });
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading STOCKFLOW_NATS_CREDS_FILE {}", path.display()))?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .context("parsing STOCKFLOW_NATS_URL")?;
        let shown: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        options
            .connect(urls)
            .await
            .with_context(|| format!("connecting to NATS at {}", shown.join(",")))
    }
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (`STOCKFLOW_REDIS_URL`); may carry credentials, so it is
    /// kept as a secret.
    pub url: Secret,
    /// ACL user.
    pub username: Option<String>,
    /// Password (for the ACL user, or the default user).
    pub password: Option<Secret>,
    /// Prefix of every key (`STOCKFLOW_KEY_PREFIX`).
    pub key_prefix: String,
}

impl RedisSettings {
    /// Reads `STOCKFLOW_REDIS_*` and `STOCKFLOW_KEY_PREFIX`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.string("STOCKFLOW_REDIS_URL", "redis://127.0.0.1:6379");
        url.as_str()
            .into_connection_info()
            .map_err(|e| ConfigError::Invalid {
                var: "STOCKFLOW_REDIS_URL",
                reason: format!("{:?} is not a Redis URL: {:?}", redact_url(&url), e.kind()),
            })?;
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
            username: env.raw("STOCKFLOW_REDIS_USERNAME"),
            password: env.secret("STOCKFLOW_REDIS_PASSWORD", "STOCKFLOW_REDIS_PASSWORD_FILE")?,
            key_prefix,
        })
    }

    /// Local defaults, for tests and tools.
    pub fn local(url: &str, key_prefix: &str) -> Self {
        Self {
            url: Secret::new(url),
            username: None,
            password: None,
            key_prefix: key_prefix.to_owned(),
        }
    }

    /// A client that reconnects by itself; one multiplexed connection serves every task.
    pub async fn connect(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        use anyhow::Context as _;
        let shown = redact_url(self.url.expose());
        let client = redis::Client::open(self.connection_info()?)
            .with_context(|| format!("opening Redis client for {shown}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .with_context(|| format!("connecting to Redis at {shown}"))
    }

    fn connection_info(&self) -> anyhow::Result<redis::ConnectionInfo> {
        let info = self.url.expose().into_connection_info().map_err(|e| {
            anyhow::anyhow!("STOCKFLOW_REDIS_URL is not a Redis URL: {:?}", e.kind())
        })?;
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
    }

    #[test]
    fn nats_user_needs_a_password() {
        let env = Env::from_pairs([("STOCKFLOW_NATS_USER", "app")]);
        let err = NatsSettings::from_env(&env, "t").expect_err("no password");
        assert!(err.to_string().starts_with("STOCKFLOW_NATS_USER:"), "{err}");
    }
}

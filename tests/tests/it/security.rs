//! Authenticated and encrypted connections, end to end against real servers configured for them:
//! NATS user/password, token, nkey, creds (operator JWTs) and TLS with a private CA (and client
//! certificates); Redis ACL users and TLS (`rediss://`) with a private CA (and client
//! certificates). Every client is built by `shared::connect` from `STOCKFLOW_*` variables, the
//! way the workers build theirs.

use async_nats::jetstream;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use stockflow_shared::{
    connect::{NatsSettings, RedisSettings},
    settings::Env,
};
use stockflow_tests::{NatsServer, RedisOptions, RedisServer, TestPki};

/// `STOCKFLOW_NATS_URL=url` plus `vars`.
fn env(url_var: &str, url: &str, vars: &[(&str, &str)]) -> Env {
    let mut pairs: Vec<(String, String)> = vec![(url_var.to_owned(), url.to_owned())];
    pairs.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let map: std::collections::HashMap<String, String> = pairs.into_iter().collect();
    Env::from_fn(move |name| map.get(name).cloned())
}

async fn nats_connect(
    server: &NatsServer,
    vars: &[(&str, &str)],
) -> anyhow::Result<async_nats::Client> {
    NatsSettings::from_env(
        &env("STOCKFLOW_NATS_URL", &server.url(), vars),
        "security-test",
    )
    .expect("valid settings")
    .connect()
    .await
}

/// The connection carries JetStream traffic: a stream is created and a publish acknowledged.
async fn assert_jetstream_works(client: async_nats::Client) {
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "AUTH_PROBE".into(),
        subjects: vec!["probe.>".into()],
        ..Default::default()
    })
    .await
    .expect("create a stream over the authenticated connection");
    let ack = js
        .publish("probe.one", "hello".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert_eq!(ack.stream, "AUTH_PROBE");
}

/// The error chain of a failed connection names `setting` and never shows `secrets`.
fn assert_names_setting_hides_secrets(error: &anyhow::Error, setting: &str, secrets: &[&str]) {
    let text = format!("{error:#} {error:?}");
    assert!(
        text.contains(setting),
        "error should name {setting}: {text}"
    );
    for secret in secrets {
        assert!(!text.contains(secret), "error shows a secret: {text}");
    }
}

#[tokio::test]
async fn nats_user_and_password_authenticate_and_a_wrong_password_is_refused() {
    let server = NatsServer::start_with(
        "authorization { users = [ { user: stockflow, password: \"pw-8d1e5b\" } ] }",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("password");
    std::fs::write(&file, "pw-8d1e5b\n").expect("write password file");
    let file = file.to_string_lossy().into_owned();

    let client = nats_connect(
        &server,
        &[
            ("STOCKFLOW_NATS_USER", "stockflow"),
            ("STOCKFLOW_NATS_PASSWORD_FILE", &file),
        ],
    )
    .await
    .expect("the right password from a file connects");
    assert_jetstream_works(client).await;

    let error = nats_connect(
        &server,
        &[
            ("STOCKFLOW_NATS_USER", "stockflow"),
            ("STOCKFLOW_NATS_PASSWORD", "wrong-3a9c"),
        ],
    )
    .await
    .expect_err("a wrong password is refused");
    assert_names_setting_hides_secrets(
        &error,
        "STOCKFLOW_NATS_USER/STOCKFLOW_NATS_PASSWORD",
        &["wrong-3a9c", "pw-8d1e5b"],
    );
    nats_connect(&server, &[])
        .await
        .expect_err("no credentials, no connection");
}

#[tokio::test]
async fn nats_token_authenticates_from_the_variable_or_a_file() {
    let server = NatsServer::start_with("authorization { token: \"tok-61f0c2\" }");
    let client = nats_connect(&server, &[("STOCKFLOW_NATS_TOKEN", "tok-61f0c2")])
        .await
        .expect("the right token connects");
    assert_jetstream_works(client).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "tok-61f0c2\n").expect("write token file");
    nats_connect(
        &server,
        &[("STOCKFLOW_NATS_TOKEN_FILE", &file.to_string_lossy())],
    )
    .await
    .expect("the token from a file connects");

    let error = nats_connect(&server, &[("STOCKFLOW_NATS_TOKEN", "tok-wrong-77")])
        .await
        .expect_err("a wrong token is refused");
    assert_names_setting_hides_secrets(
        &error,
        "STOCKFLOW_NATS_TOKEN",
        &["tok-wrong-77", "tok-61f0c2"],
    );
}

#[tokio::test]
async fn nats_nkey_seed_from_a_file_authenticates() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("user.nk");
    let seed = user.seed().expect("seed");
    std::fs::write(&file, format!("{seed}\n")).expect("write seed");
    let client = nats_connect(
        &server,
        &[("STOCKFLOW_NATS_NKEY_FILE", &file.to_string_lossy())],
    )
    .await
    .expect("the registered nkey connects");
    assert_jetstream_works(client).await;

    let other_seed = stranger.seed().expect("seed");
    let error = nats_connect(&server, &[("STOCKFLOW_NATS_NKEY", &other_seed)])
        .await
        .expect_err("an unknown nkey is refused");
    assert_names_setting_hides_secrets(&error, "STOCKFLOW_NATS_NKEY", &[&other_seed, &seed]);
}

/// A signed NATS JWT: `claims` gains `iss`, `sub`, `iat` and `jti`, and is signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, mut claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    claims["iss"] = issuer.public_key().into();
    claims["sub"] = subject.into();
    claims["iat"] = 1_700_000_000_u64.into();
    claims["jti"] = format!("{subject}-{}", claims["name"]).into();
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn nats_creds_file_authenticates_against_an_operator_mode_server() {
    use serde_json::json;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        json!({ "name": "op", "nats": { "type": "operator", "version": 2 } }),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1,
        "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        json!({ "name": "stockflow", "nats": {
            "limits": unlimited, "type": "account", "version": 2
        } }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        json!({ "name": "worker", "nats": {
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2
        } }),
    );
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        json!({ "name": "SYS", "nats": { "type": "account", "version": 2 } }),
    );
    let server = NatsServer::start_with(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acc}: {account_jwt}, {sys}: {system_jwt} }}",
        acc = account.public_key(),
        sys = system.public_key(),
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("worker.creds");
    let seed = user.seed().expect("seed");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("write creds");
    let client = nats_connect(
        &server,
        &[("STOCKFLOW_NATS_CREDS_FILE", &creds.to_string_lossy())],
    )
    .await
    .unwrap_or_else(|e| panic!("creds connect: {e:#}\n{}", server.log()));
    assert_jetstream_works(client).await;

    // A user signed by an account the operator does not know is refused.
    let rogue_account = nkeys::KeyPair::new_account();
    let rogue_jwt = jwt(
        &rogue_account,
        &user.public_key(),
        json!({ "name": "rogue", "nats": { "type": "user", "version": 2 } }),
    );
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{rogue_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("write creds");
    let error = nats_connect(
        &server,
        &[("STOCKFLOW_NATS_CREDS_FILE", &creds.to_string_lossy())],
    )
    .await
    .expect_err("an unknown account is refused");
    assert_names_setting_hides_secrets(&error, "STOCKFLOW_NATS_CREDS_FILE", &[&seed]);
}

#[tokio::test]
async fn nats_tls_with_a_private_ca_connects_and_an_untrusted_server_is_refused() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let server = NatsServer::start_with(&pki.nats_tls_block(false));
    assert!(server.url().starts_with("tls://"));
    let ca = pki.ca().to_string_lossy().into_owned();
    let client = nats_connect(&server, &[("STOCKFLOW_NATS_TLS_CA_FILE", &ca)])
        .await
        .expect("the private CA is trusted");
    assert_jetstream_works(client).await;

    let other_ca = other.ca().to_string_lossy().into_owned();
    nats_connect(&server, &[("STOCKFLOW_NATS_TLS_CA_FILE", &other_ca)])
        .await
        .expect_err("a certificate from another CA is refused");
    nats_connect(&server, &[])
        .await
        .expect_err("the system roots do not trust a private CA");
}

#[tokio::test]
async fn nats_mutual_tls_needs_the_client_certificate() {
    let pki = TestPki::generate();
    let server = NatsServer::start_with(&pki.nats_tls_block(true));
    let ca = pki.ca().to_string_lossy().into_owned();
    let cert = pki.client_cert().to_string_lossy().into_owned();
    let key = pki.client_key().to_string_lossy().into_owned();
    let client = nats_connect(
        &server,
        &[
            ("STOCKFLOW_NATS_TLS_CA_FILE", &ca),
            ("STOCKFLOW_NATS_TLS_CERT_FILE", &cert),
            ("STOCKFLOW_NATS_TLS_KEY_FILE", &key),
        ],
    )
    .await
    .expect("with a client certificate");
    assert_jetstream_works(client).await;
    nats_connect(&server, &[("STOCKFLOW_NATS_TLS_CA_FILE", &ca)])
        .await
        .expect_err("without a client certificate the server refuses");
}

async fn redis_connect(
    server: &RedisServer,
    vars: &[(&str, &str)],
) -> anyhow::Result<stockflow_shared::redis_conn::RedisConnection> {
    RedisSettings::from_env(&env("STOCKFLOW_REDIS_URL", &server.url(), vars))
        .expect("valid settings")
        .connect()
        .await
}

/// The ACL the operations guide recommends: the key prefix only, no dangerous commands.
const WORKER_ACL: &str = "user stockflow on >rpw-4e2a91 ~sf:* &* +@all -@dangerous\n";

#[tokio::test]
async fn redis_acl_user_is_confined_to_the_prefix_and_a_wrong_password_is_refused() {
    let server = RedisServer::start_with(RedisOptions {
        conf: WORKER_ACL.into(),
        default_password: Some("admin-0b7d".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("password");
    std::fs::write(&file, "rpw-4e2a91\n").expect("write password file");
    let mut conn = redis_connect(
        &server,
        &[
            ("STOCKFLOW_REDIS_USERNAME", "stockflow"),
            ("STOCKFLOW_REDIS_PASSWORD_FILE", &file.to_string_lossy()),
        ],
    )
    .await
    .expect("the ACL user connects");
    let whoami: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .expect("whoami");
    assert_eq!(whoami, "stockflow");
    // Scripts run under the user's key permissions too.
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let n: i64 = script
        .key("sf:{A}:probe")
        .arg(2)
        .invoke_async(&mut conn)
        .await
        .expect("a key under the prefix");
    assert_eq!(n, 2);
    let refused: redis::RedisResult<i64> = script
        .key("other:{A}:probe")
        .arg(2)
        .invoke_async(&mut conn)
        .await;
    assert!(refused.is_err(), "keys outside the prefix are refused");
    let flush: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
    assert!(flush.is_err(), "dangerous commands are refused");

    let error = redis_connect(
        &server,
        &[
            ("STOCKFLOW_REDIS_USERNAME", "stockflow"),
            ("STOCKFLOW_REDIS_PASSWORD", "wrong-c0ffee"),
        ],
    )
    .await
    .expect_err("a wrong password is refused");
    assert_names_setting_hides_secrets(
        &error,
        "STOCKFLOW_REDIS_USERNAME/STOCKFLOW_REDIS_PASSWORD",
        &["wrong-c0ffee", "rpw-4e2a91", "admin-0b7d"],
    );
}

#[tokio::test]
async fn redis_tls_with_a_private_ca_connects_and_an_untrusted_server_is_refused() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let server = RedisServer::start_with(RedisOptions {
        tls: Some(&pki),
        conf: WORKER_ACL.into(),
        ..Default::default()
    });
    assert!(server.url().starts_with("rediss://"));
    let ca = pki.ca().to_string_lossy().into_owned();
    let user = [
        ("STOCKFLOW_REDIS_USERNAME", "stockflow"),
        ("STOCKFLOW_REDIS_PASSWORD", "rpw-4e2a91"),
    ];
    let mut conn = redis_connect(
        &server,
        &[user[0], user[1], ("STOCKFLOW_REDIS_TLS_CA_FILE", &ca)],
    )
    .await
    .expect("the private CA is trusted");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("ping");
    assert_eq!(pong, "PONG");

    let other_ca = other.ca().to_string_lossy().into_owned();
    redis_connect(
        &server,
        &[user[0], user[1], ("STOCKFLOW_REDIS_TLS_CA_FILE", &other_ca)],
    )
    .await
    .expect_err("a certificate from another CA is refused");
    redis_connect(&server, &user)
        .await
        .expect_err("the system roots do not trust a private CA");
}

#[tokio::test]
async fn redis_mutual_tls_needs_the_client_certificate() {
    let pki = TestPki::generate();
    let server = RedisServer::start_with(RedisOptions {
        tls: Some(&pki),
        conf: "tls-auth-clients yes\n".into(),
        ..Default::default()
    });
    let ca = pki.ca().to_string_lossy().into_owned();
    let cert = pki.client_cert().to_string_lossy().into_owned();
    let key = pki.client_key().to_string_lossy().into_owned();
    let mut conn = redis_connect(
        &server,
        &[
            ("STOCKFLOW_REDIS_TLS_CA_FILE", &ca),
            ("STOCKFLOW_REDIS_TLS_CERT_FILE", &cert),
            ("STOCKFLOW_REDIS_TLS_KEY_FILE", &key),
        ],
    )
    .await
    .expect("with a client certificate");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("ping");
    assert_eq!(pong, "PONG");
    redis_connect(&server, &[("STOCKFLOW_REDIS_TLS_CA_FILE", &ca)])
        .await
        .expect_err("without a client certificate the server refuses");
}

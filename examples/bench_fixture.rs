//! Load-test fixture: a loopback stand-in for the Bot Framework's OpenID metadata + JWKS, and a token minter.
//!
//! Used by `scripts/load.sh` so that a load run needs nothing outside this repository:
//!
//! ```text
//! cargo run --release --example bench_fixture -- serve --port 18081 --key-file /tmp/k.pem
//! cargo run --release --example bench_fixture -- mint --key-file /tmp/k.pem --aud APPID --serviceurl URL [--exp SECS]
//! ```
//!
//! `serve` creates an RSA-2048 key in `--key-file` (PKCS#8 PEM) when that file does not exist, then serves, on
//! 127.0.0.1 only, `/v1/.well-known/openidconfiguration` (issuer `https://api.botframework.com`, `jwks_uri`) and
//! `/v1/keys` (one key, endorsed for `msteams` and `webchat`). `mint` prints an RS256 channel token signed with
//! that key, shaped like the real Bot Connector's (`iss`, `aud`, `serviceurl`, `nbf`, `exp`).
//! This is test scaffolding: the key is a throw-away key, never a real one.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The key id published in the JWKS and set in every minted token's header.
const KID: &str = "bench-kid-1";
/// The pinned issuer of the public cloud's Bot Framework channel tokens.
const ISSUER: &str = "https://api.botframework.com";

#[derive(Debug, Parser)]
#[command(about = "Loopback OpenID metadata + JWKS and an RS256 token minter, for load tests")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the metadata and JWKS on 127.0.0.1:PORT (creating the key file if it is missing).
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
    /// Print a channel token signed with the key in FILE.
    Mint {
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The bot's app id (the token's `aud`).
        #[arg(long)]
        aud: String,
        /// The `serviceurl` claim; must equal the activity's `serviceUrl`.
        #[arg(long)]
        serviceurl: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        exp: i64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Serve { port, key_file } => serve(port, &key_file),
        Cmd::Mint { key_file, aud, serviceurl, exp } => {
            let key = EncodingKey::from_rsa_pem(read_key(&key_file)?.as_bytes()).context("parsing the key file")?;
            let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
            let claims = json!({"iss": ISSUER, "aud": aud, "serviceurl": serviceurl, "nbf": now - 5, "exp": now + exp});
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(KID.to_owned());
            header.typ = Some("JWT".to_owned());
            println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
            Ok(())
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {} (run `serve` first to create it)", path.display()))
}

/// The key in `path`, generated and written there first when the file does not exist.
fn load_or_create_key(path: &Path) -> anyhow::Result<EncodingKey> {
    if !path.exists() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("generating an RSA key")?;
        std::fs::write(path, pair.serialize_pem()).with_context(|| format!("writing {}", path.display()))?;
    }
    EncodingKey::from_rsa_pem(read_key(path)?.as_bytes()).context("parsing the key file")
}

fn serve(port: u16, key_file: &Path) -> anyhow::Result<()> {
    let key = load_or_create_key(key_file)?;
    let public = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256)?)?;
    let (Some(n), Some(e)) = (public["n"].as_str(), public["e"].as_str()) else { bail!("the JWK has no RSA modulus/exponent") };
    let base = format!("http://127.0.0.1:{port}");
    let metadata = json!({
        "issuer": ISSUER,
        "authorization_endpoint": format!("{base}/v1/auth"),
        "jwks_uri": format!("{base}/v1/keys"),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    });
    let jwks = json!({"keys": [{
        "kty": "RSA", "use": "sig", "kid": KID, "x5t": KID, "n": n, "e": e, "endorsements": ["msteams", "webchat"],
    }]});
    let app = Router::new()
        .route("/v1/.well-known/openidconfiguration", get(move || json_reply(metadata.clone())))
        .route("/v1/keys", get(move || json_reply(jwks.clone())));
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        eprintln!("bench_fixture: OpenID metadata on {base}/v1/.well-known/openidconfiguration");
        axum::serve(listener, app).await.context("serving")
    })
}

async fn json_reply(v: Value) -> axum::Json<Value> {
    axum::Json(v)
}

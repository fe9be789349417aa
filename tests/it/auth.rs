//! Inbound token rules, table-driven against one gateway and the strict OpenID/JWKS fake.

use serde_json::{Value, json};

use crate::helpers::*;

/// Mutate the good claims.
fn claims(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = good_claims();
    f(&mut c);
    c
}

#[tokio::test]
async fn every_token_rule_is_enforced() {
    let teams = TestKey::teams("kid-teams", 0);
    let webchat_only = TestKey::new("kid-webchat", 1, Some(&["webchat"]));
    let unendorsed = TestKey::new("kid-bare", 2, None);
    let oidc = FakeOidc::start(vec![teams.clone(), webchat_only.clone(), unendorsed.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.credential = true;
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;

    let t = |c: &Value| Some(teams.mint(c));
    // (name, Authorization header token, expected status)
    let cases: Vec<(&str, Option<String>, u16)> = vec![
        ("valid", t(&good_claims()), 202),
        ("expired beyond the 300 s skew", t(&claims(|c| c["exp"] = json!(now() - 400))), 401),
        ("expired within the skew", t(&claims(|c| c["exp"] = json!(now() - 100))), 202),
        ("nbf in the future beyond skew", t(&claims(|c| c["nbf"] = json!(now() + 400))), 401),
        ("nbf within skew", t(&claims(|c| c["nbf"] = json!(now() + 100))), 202),
        (
            "no exp",
            t(&claims(|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            401,
        ),
        ("wrong issuer", t(&claims(|c| c["iss"] = json!("https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"))), 401),
        ("issuer of another cloud", t(&claims(|c| c["iss"] = json!("https://api.botframework.us"))), 401),
        ("issuer as an array holding the right issuer", t(&claims(|c| c["iss"] = json!([ISSUER]))), 401),
        ("issuer as an array of two", t(&claims(|c| c["iss"] = json!([ISSUER, "https://evil.example"]))), 401),
        ("issuer as an object", t(&claims(|c| c["iss"] = json!({"iss": ISSUER}))), 401),
        ("audience as an object", t(&claims(|c| c["aud"] = json!({"aud": APP_ID}))), 401),
        ("serviceurl as an array", t(&claims(|c| c["serviceurl"] = json!([SERVICE_URL]))), 401),
        ("exp as a string", t(&claims(|c| c["exp"] = json!((now() + 3600).to_string()))), 401),
        ("wrong audience", t(&claims(|c| c["aud"] = json!("some-other-app"))), 401),
        ("connector audience replayed inbound", t(&claims(|c| c["aud"] = json!("https://api.botframework.com"))), 401),
        ("audience as an array", t(&claims(|c| c["aud"] = json!([APP_ID]))), 401),
        (
            "no audience",
            t(&claims(|c| {
                c.as_object_mut().unwrap().remove("aud");
            })),
            401,
        ),
        (
            "no serviceurl claim",
            t(&claims(|c| {
                c.as_object_mut().unwrap().remove("serviceurl");
            })),
            401,
        ),
        ("different serviceurl", t(&claims(|c| c["serviceurl"] = json!("https://smba.trafficmanager.net/emea/"))), 401),
        ("userinfo-spoofed serviceurl", t(&claims(|c| c["serviceurl"] = json!("https://smba.trafficmanager.net@evil.com/amer/"))), 401),
        ("serviceurl equal after normalisation", t(&claims(|c| c["serviceurl"] = json!("https://SMBA.trafficmanager.net:443/amer"))), 202),
        ("bad signature (forged with another key)", Some(teams.mint_forged(&good_claims())), 401),
        ("alg none", Some(unsigned_token(&json!({"alg": "none", "typ": "JWT", "kid": "kid-teams"}), &good_claims())), 401),
        ("HS256 signed with the public key", Some(hs256_with_public_key(&teams, &good_claims())), 401),
        ("RS512 header", Some(unsigned_token(&json!({"alg": "RS512", "kid": "kid-teams"}), &good_claims())), 401),
        ("no kid", Some(unsigned_token(&json!({"alg": "RS256"}), &good_claims())), 401),
        ("unknown kid", Some(TestKey::teams("kid-nobody-knows", 0).mint(&good_claims())), 401),
        ("key not endorsed for msteams", Some(webchat_only.mint(&good_claims())), 401),
        ("key with no endorsements", Some(unendorsed.mint(&good_claims())), 401),
        ("malformed token", Some("not.a-token".to_owned()), 401),
        ("garbage segments", Some("eyJ.eyJ.sig".to_owned()), 401),
        ("no Authorization header", None, 401),
    ];
    let mut failures = Vec::new();
    for (name, token, want) in &cases {
        let body = message(&unique_id("auth"));
        let got = app.status(token.as_deref(), &body).await;
        if got != *want {
            failures.push(format!("{name}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", app.stderr());

    // The response never says why.
    let resp = app.post(Some(&teams.mint(&claims(|c| c["aud"] = json!("x")))), &message(&unique_id("auth"))).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.text().await.unwrap(), r#"{"error":"unauthorized"}"#);

    // Non-Bearer schemes.
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "bearer"] {
        let r = app
            .client()
            .post(format!("{}/api/messages", app.url))
            .header("content-type", "application/json")
            .header("authorization", header)
            .body(message(&unique_id("auth")).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}");
    }

    // Every refusal was counted by reason, and nothing was stored for any of them.
    assert!(app.metric("agentgate_auth_failures_total{reason=\"expired\"}").await >= 1);
    assert!(app.metric("agentgate_auth_failures_total{reason=\"endorsement_missing\"}").await >= 2);
    assert!(app.metric("agentgate_auth_failures_total{reason=\"serviceurl_mismatch\"}").await >= 2);
    assert!(app.metric("agentgate_auth_failures_total{reason=\"bad_algorithm\"}").await >= 3);
    let accepted = cases.iter().filter(|c| c.2 == 202).count();
    assert_eq!(app.inbox().len(), accepted);

    // Tokens are credentials: none may reach the log.
    let log = app.stderr();
    for (name, token, _) in &cases {
        if let Some(t) = token.as_deref().filter(|t| t.len() > 40) {
            assert!(!log.contains(t), "token of case {name} was logged");
        }
    }
    assert!(!log.contains("s3cr3t-value-that-must-never-be-logged"));
}

#[tokio::test]
async fn endorsement_can_be_relaxed_per_bot_but_a_wrong_endorsement_still_fails() {
    let unendorsed = TestKey::new("kid-bare", 2, None);
    let webchat_only = TestKey::new("kid-webchat", 1, Some(&["webchat"]));
    let oidc = FakeOidc::start(vec![unendorsed.clone(), webchat_only.clone()]).await;
    let mut opts = Options::new(&oidc.metadata_url);
    opts.require_endorsement = false;
    let app = TestApp::spawn(&opts).await;
    app.wait_ready().await;
    assert_eq!(app.status(Some(&unendorsed.mint(&good_claims())), &message(&unique_id("e"))).await, 202);
    assert_eq!(app.status(Some(&webchat_only.mint(&good_claims())), &message(&unique_id("e"))).await, 401);
}

#[tokio::test]
async fn a_cached_token_is_still_checked_against_each_activity() {
    let teams = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![teams.clone()]).await;
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    app.wait_ready().await;
    let token = teams.mint(&good_claims());
    assert_eq!(app.status(Some(&token), &message(&unique_id("c"))).await, 202);
    assert_eq!(app.status(Some(&token), &message(&unique_id("c"))).await, 202);
    assert!(app.metric("agentgate_token_cache_hits_total").await >= 1, "the second use should hit the cache");

    // Same (cached) token, but the activity names another service URL: the binding is re-checked.
    let mut other_url = message(&unique_id("c"));
    other_url["serviceUrl"] = json!("https://smba.trafficmanager.net/emea/");
    assert_eq!(app.status(Some(&token), &other_url).await, 401);

    // Same token, another channel: the key is endorsed for msteams and webchat only.
    let mut other_channel = message(&unique_id("c"));
    other_channel["channelId"] = json!("skype");
    assert_eq!(app.status(Some(&token), &other_channel).await, 401);

    // A token that expires while cached is refused once it is past exp + skew.
    let short = teams.mint(&claims(|c| c["exp"] = json!(now() - 298)));
    assert_eq!(app.status(Some(&short), &message(&unique_id("c"))).await, 202);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(app.status(Some(&short), &message(&unique_id("c"))).await, 401);
}

#[tokio::test]
async fn the_audience_selects_the_bot_and_its_tenants() {
    let teams = TestKey::teams("kid-teams", 0);
    let oidc = FakeOidc::start(vec![teams.clone()]).await;
    let app = TestApp::spawn(&Options::new(&oidc.metadata_url)).await;
    app.wait_ready().await;
    // A token for the other client's bot cannot deliver into the first client's tenant ...
    let other = teams.mint(&claims(|c| c["aud"] = json!(OTHER_APP_ID)));
    assert_eq!(app.status(Some(&other), &message(&unique_id("t"))).await, 403);
    // ... but can deliver into its own.
    let mut own = message(&unique_id("t"));
    own["conversation"]["tenantId"] = json!(OTHER_TENANT);
    own["channelData"]["tenant"]["id"] = json!(OTHER_TENANT);
    own["recipient"]["id"] = json!(format!("28:{OTHER_APP_ID}"));
    assert_eq!(app.status(Some(&other), &own).await, 202);
    let items = app.inbox();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["bot_app_id"], OTHER_APP_ID);
    assert_eq!(items[0]["tenant_id"], OTHER_TENANT);
}

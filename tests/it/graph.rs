//! The Graph client as the Agent User against the strict fake Graph and the fake Entra chain: request
//! shapes, paging, the host allow-list (for nextLinks too), 429 and 401 handling, error classes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use agentgate::entra::AgentUser;
use agentgate::graph::{
    ChatMember, GraphClient, GraphEndpoint, GraphError, GraphErrorKind, GraphSettings, GraphToken, MessageBody, NewChat,
};
use serde_json::json;

use crate::agent_tokens::Chain;
use crate::fake_entra_agent::{AGENT_USER_OID, AGENT_USER_UPN, FakeHop};
use crate::fake_graph::{Canned, FakeGraph, HOME_DOMAIN};

const FABRIKAM_TENANT: &str = "fabfabfa-0000-4000-8000-000000000009";

struct Setup {
    chain: Chain,
    graph: FakeGraph,
    client: GraphClient,
}

fn settings() -> GraphSettings {
    GraphSettings {
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        default_retry_after: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
        base_backoff: Duration::from_millis(20),
        max_response_bytes: 1024 * 1024,
    }
}

async fn setup() -> Setup {
    let chain = Chain::start(AgentUser::ObjectId(AGENT_USER_OID.into())).await;
    let graph = FakeGraph::start(chain.fake.graph_checker(), AGENT_USER_OID, AGENT_USER_UPN).await;
    let tokens: Arc<dyn GraphToken> = chain.tokens.clone();
    let client = GraphClient::new(GraphEndpoint::parse(&graph.base_url()).unwrap(), tokens, settings()).unwrap();
    Setup { chain, graph, client }
}

fn bind(key: &str) -> String {
    format!("https://graph.microsoft.com/v1.0/users('{key}')")
}

#[tokio::test]
async fn chats_are_created_with_the_agent_user_and_cross_tenant_members_by_email_and_home_tenant() {
    let t = setup().await;
    let one = t
        .client
        .create_chat(&NewChat::OneOnOne(ChatMember::External { email: "o'brien@fabrikam.test".into(), tenant_id: FABRIKAM_TENANT.into() }))
        .await
        .unwrap();
    assert_eq!(one.chat_type, "oneOnOne");
    let members = t.graph.members(&one.id);
    assert_eq!(members[0]["user@odata.bind"], bind(AGENT_USER_OID));
    assert!(members[0].get("tenantId").is_none());
    assert_eq!(members[1]["user@odata.bind"], bind("o''brien@fabrikam.test"), "OData quotes doubled");
    assert_eq!(members[1]["tenantId"], FABRIKAM_TENANT);
    assert_eq!(members[1]["roles"], json!(["owner"]));

    let group = t
        .client
        .create_chat(&NewChat::Group {
            topic: Some("Incident 42".into()),
            members: vec![
                ChatMember::InTenant(format!("ann@{HOME_DOMAIN}")),
                ChatMember::External { email: "bo@fabrikam.test".into(), tenant_id: FABRIKAM_TENANT.into() },
            ],
        })
        .await
        .unwrap();
    assert_eq!(group.chat_type, "group");
    assert_eq!(group.topic.as_deref(), Some("Incident 42"));
    assert_eq!(t.graph.members(&group.id).len(), 3);

    // Refused here, nothing sent: too few members, a guest without a home tenant id.
    let before = t.graph.seen().len();
    let e = t.client.create_chat(&NewChat::Group { topic: None, members: vec![ChatMember::InTenant("x".into())] }).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Refused);
    let e = t
        .client
        .create_chat(&NewChat::OneOnOne(ChatMember::External { email: "bo@fabrikam.test".into(), tenant_id: "fabrikam".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Refused);
    assert_eq!(t.graph.seen().len(), before);

    // Members: added (201 with an empty body) and listed.
    let added = t
        .client
        .add_chat_member(&group.id, &ChatMember::External { email: "cy@fabrikam.test".into(), tenant_id: FABRIKAM_TENANT.into() })
        .await
        .unwrap();
    assert!(added.is_none());
    let listed = t.client.list_chat_members(&group.id).await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[3].email.as_deref(), Some("cy@fabrikam.test"));
    assert_eq!(listed[3].tenant_id.as_deref(), Some(FABRIKAM_TENANT));
}

#[tokio::test]
async fn messages_carry_escaped_html_mentions_and_cards_and_can_be_edited_and_deleted() {
    let t = setup().await;
    let chat = t.client.create_chat(&NewChat::OneOnOne(ChatMember::InTenant(format!("ann@{HOME_DOMAIN}")))).await.unwrap();
    let card = json!({"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "Approve?"}], "actions": [{"type": "Action.OpenUrl", "title": "Open", "url": "https://example.test"}]});
    let body = MessageBody::from_text("Hi ").mention("ann-oid", "Ann <Ops>").text(", <script>alert('x')</script> & done").card(&card);
    let sent = t.client.send_chat_message(&chat.id, &body).await.unwrap();
    assert_eq!(sent.from.unwrap().user.unwrap().id.as_deref(), Some(AGENT_USER_OID));
    let stored = &t.graph.messages(&chat.id)[0];
    let content = stored["body"]["content"].as_str().unwrap();
    assert!(content.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; done"), "{content}");
    assert!(!content.contains("<script>"));
    assert!(content.contains("<at id=\"0\">Ann &lt;Ops&gt;</at>"), "{content}");
    assert_eq!(stored["mentions"][0]["mentioned"]["user"]["id"], "ann-oid");
    assert_eq!(stored["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");

    let fetched = t.client.get_chat_message(&chat.id, &sent.id).await.unwrap();
    assert_eq!(fetched.body.content, content);
    assert_eq!(fetched.mentions.len(), 1);

    t.client.edit_chat_message(&chat.id, &sent.id, &MessageBody::from_text("edited")).await.unwrap();
    assert_eq!(t.graph.messages(&chat.id)[0]["body"]["content"], "edited");
    t.client.soft_delete_chat_message(&chat.id, &sent.id).await.unwrap();
    let last = t.graph.seen().pop().unwrap();
    assert_eq!((last.method.as_str(), last.path), ("POST", format!("me/chats/{}/messages/{}/softDelete", chat.id, sent.id)));
    assert!(t.graph.messages(&chat.id)[0]["deletedDateTime"].is_string());

    // Too large: refused before sending.
    let before = t.graph.seen().len();
    let e = t.client.send_chat_message(&chat.id, &MessageBody::from_text(&"&".repeat(6000))).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Refused);
    assert!(e.to_string().contains("28000"), "{e}");
    assert_eq!(t.graph.seen().len(), before);
}

#[tokio::test]
async fn listings_follow_next_links_and_users_are_looked_up_by_id_or_upn() {
    let t = setup().await;
    let chat = t.graph.seed_chat(12);
    t.graph.set_page_size(5);
    let msgs = t.client.list_chat_messages(&chat, 100).await.unwrap();
    assert_eq!(msgs.len(), 12);
    assert_eq!(msgs[0].body.content, "m11", "newest first");
    let gets: Vec<_> = t.graph.seen().into_iter().filter(|s| s.path.ends_with("/messages")).collect();
    assert_eq!(gets.len(), 3);
    assert_eq!(gets[0].query["$orderby"], "createdDateTime desc");
    assert_eq!(t.client.list_chat_messages(&chat, 7).await.unwrap().len(), 7);

    for _ in 0..3 {
        t.graph.seed_chat(0);
    }
    t.graph.set_page_size(2);
    assert_eq!(t.client.list_chats(50).await.unwrap().len(), 4);
    assert!(t.graph.seen().iter().filter(|s| s.path == "me/chats").all(|s| !s.query.contains_key("$orderby")));

    let guest = "bo_fabrikam.test#EXT#@contoso.onmicrosoft.test";
    t.graph.add_user(json!({"id": "guest-oid", "displayName": "Bo", "userPrincipalName": guest, "userType": "Guest"}));
    assert_eq!(t.client.get_user(guest).await.unwrap().id, "guest-oid");
    let g = t.client.get_user("guest-oid").await.unwrap();
    assert_eq!(g.user_type.as_deref(), Some("Guest"));
    assert!(g.is_guest());
    let me = t.client.me().await.unwrap();
    assert_eq!(me.id, AGENT_USER_OID);
    assert!(!me.is_guest());
    t.graph.add_user(json!({"id": "ext-oid", "userPrincipalName": "cy_fabrikam.test#EXT#@contoso.onmicrosoft.test", "userType": null}));
    assert!(t.client.get_user("ext-oid").await.unwrap().is_guest(), "a null userType falls back to the #EXT# pattern");
    let e = t.client.get_user("nobody@contoso.onmicrosoft.test").await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::NotFound);
}

/// A listener that counts connections and never answers.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    tokio::spawn(async move {
        while let Ok((_sock, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("http://{addr}"), n)
}

#[tokio::test]
async fn the_token_never_goes_to_a_host_outside_the_allow_list() {
    let t = setup().await;
    let chat = t.graph.seed_chat(4);
    t.graph.set_page_size(2);
    let (other, connections) = counting_listener().await;
    for link in [
        format!("{other}/v1.0/chats/x/messages?$skiptoken=2"),
        "https://graph.microsoft.com.evil.test/v1.0/chats".to_owned(),
        "http://graph.microsoft.com/v1.0/chats".to_owned(),
    ] {
        t.graph.set_next_link(&link);
        let e = t.client.list_chat_messages(&chat, 100).await.unwrap_err();
        assert!(matches!(e, GraphError::NotAllowed(_)), "{link}: {e}");
        assert_eq!(e.kind(), GraphErrorKind::Refused);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing reached the other host");

    // A client whose base is not a Graph host cannot be built; a base on another loopback port gets nothing either.
    assert!(GraphEndpoint::parse("https://graph.example.test/v1.0").is_err());
    let tokens: Arc<dyn GraphToken> = t.chain.tokens.clone();
    let c = GraphClient::new(GraphEndpoint::global(), tokens, settings()).unwrap();
    assert_eq!(c.endpoint().base(), "https://graph.microsoft.com/v1.0");
}

#[tokio::test]
async fn throttling_honours_retry_after_in_both_forms_and_gives_up_on_long_waits() {
    let t = setup().await;
    let chat = t.graph.seed_chat(1);
    t.graph.inject([Canned::throttled(Some("1"))]);
    let start = Instant::now();
    t.client.get_chat(&chat).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
    assert_eq!(t.graph.seen().len(), 2);

    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    t.graph.inject([Canned::throttled(Some(&date))]);
    let start = Instant::now();
    // A POST that was throttled was not processed: it is retried too.
    t.client.send_chat_message(&chat, &MessageBody::from_text("after 429")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
    assert_eq!(t.graph.messages(&chat).len(), 2);

    t.graph.inject([Canned::throttled(Some("3600"))]);
    let before = t.graph.seen().len();
    let start = Instant::now();
    let e = t.client.get_chat(&chat).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, GraphError::Throttled { retry_after: Some(d) } if d == Duration::from_secs(3600)), "{e}");
    assert_eq!(t.graph.seen().len(), before + 1);

    t.graph.inject([Canned::throttled(None), Canned::throttled(None), Canned::throttled(None)]);
    assert_eq!(t.client.get_chat(&chat).await.unwrap_err().kind(), GraphErrorKind::Throttled);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let t = setup().await;
    let chat = t.graph.seed_chat(1);
    t.client.get_chat(&chat).await.unwrap();
    t.graph.inject([Canned::status(401, "InvalidAuthenticationToken")]);
    t.client.get_chat(&chat).await.unwrap();
    let seen = t.graph.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].bearer, seen[1].bearer);
    assert_ne!(seen[1].bearer, seen[2].bearer, "a fresh token after the 401");
    assert_eq!(t.chain.fake.hop_requests(), [1, 1, 2], "only T3 was refreshed");

    t.graph.inject([Canned::status(401, "InvalidAuthenticationToken"), Canned::status(401, "InvalidAuthenticationToken")]);
    let e = t.client.get_chat(&chat).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Unauthorized);
    assert_eq!(t.graph.seen().len(), 5);
    for s in t.graph.seen() {
        assert!(!e.to_string().contains(&s.bearer) && !format!("{e:?}").contains(&s.bearer));
    }
}

#[tokio::test]
async fn errors_are_classified_and_creates_are_not_reposted_after_a_5xx() {
    let t = setup().await;
    let chat = t.graph.seed_chat(1);
    t.graph.inject([Canned::status(403, "Forbidden")]);
    let e = t.client.send_chat_message(&chat, &MessageBody::from_text("x")).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Forbidden);
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("Forbidden"), "{e}");

    let before = t.graph.seen().len();
    t.graph.inject([Canned::status(502, "BadGateway")]);
    let e = t.client.send_chat_message(&chat, &MessageBody::from_text("x")).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Transient);
    assert_eq!(t.graph.seen().len(), before + 1, "a create is not re-posted after a 5xx");

    t.graph.inject([Canned::status(503, "ServiceUnavailable")]);
    t.client.get_chat(&chat).await.unwrap();
    assert_eq!(t.graph.seen().len(), before + 3, "a read is retried");

    let e = t.client.get_chat("19:missing@thread.v2").await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::NotFound);

    // The chain's failure surfaces with its hop.
    t.chain.tokens.invalidate(t.chain.tokens.graph_scope());
    t.chain.fake.inject(FakeHop::Three, [crate::fake_entra::Injected::aadsts(400, 7000112)]);
    let e = t.client.get_chat(&chat).await.unwrap_err();
    assert_eq!(e.kind(), GraphErrorKind::Token);
    assert!(e.to_string().contains("hop 3 (Agent User → T3)"), "{e}");
}

/// A log sink for the test's tracing subscriber.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// Runs [`log_capture_body`] in a process of its own: tracing's per-call-site interest cache is shared by
/// every test thread, so a subscriber set for one test thread can miss events.
#[test]
fn no_token_assertion_or_key_reaches_the_logs_even_at_trace_level() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "graph::log_capture_body", "--ignored", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
#[ignore = "run in its own process by no_token_assertion_or_key_reaches_the_logs_even_at_trace_level"]
async fn log_capture_body() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(logs.clone()).with_ansi(false).finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let t = setup().await;
    let chat = t.graph.seed_chat(3);
    t.graph.inject([Canned::throttled(Some("0")), Canned::status(401, "InvalidAuthenticationToken")]);
    t.client.send_chat_message(&chat, &MessageBody::from_text("hello")).await.unwrap();
    t.client.list_chat_messages(&chat, 10).await.unwrap();
    t.chain.fake.inject(FakeHop::Three, [crate::fake_entra::Injected::Status(503)]);
    t.chain.tokens.invalidate(t.chain.tokens.graph_scope());
    t.client.get_chat(&chat).await.unwrap();
    t.chain.tokens.invalidate(t.chain.tokens.graph_scope());
    t.chain.fake.inject(FakeHop::Three, [crate::fake_entra::Injected::aadsts(401, 7000112)]);
    let _ = t.client.get_chat(&chat).await.unwrap_err();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("requesting T3") && text.contains("throttled by Graph"), "the capture works:\n{text}");
    let mut secrets: Vec<String> = t.chain.fake.issued().into_iter().map(|i| i.token).collect();
    secrets.extend(t.chain.fake.forms().into_iter().filter_map(|(_, f)| f.get("client_assertion").cloned()));
    secrets.extend(t.graph.seen().into_iter().map(|s| s.bearer).filter(|b| !b.is_empty()));
    assert!(secrets.len() > 5);
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret reached the logs");
        // Not even a recognisable part of one (a JWT's signature part).
        let tail = s.rsplit('.').next().unwrap();
        assert!(!text.contains(tail), "part of a secret reached the logs");
    }
    assert!(!text.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_home_tenant_is_found_from_the_email_domain_and_remembered() {
    use axum::extract::{Path, State};
    use axum::response::IntoResponse;
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/{domain}/v2.0/.well-known/openid-configuration",
            axum::routing::get(|State(hits): State<Arc<AtomicUsize>>, Path(domain): Path<String>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                match domain.as_str() {
                    "fabrikam.test" => axum::Json(
                        json!({"issuer": format!("https://login.microsoftonline.com/{FABRIKAM_TENANT}/v2.0"), "token_endpoint": "x"}),
                    )
                    .into_response(),
                    _ => (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_tenant", "error_codes": [90002]})))
                        .into_response(),
                }
            }),
        )
        .with_state(Arc::clone(&hits));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let resolver = agentgate::graph::TenantResolver::new(agentgate::entra::Authority::parse(&base).unwrap()).unwrap();
    assert_eq!(resolver.home_tenant("Bo@Fabrikam.test").await.unwrap(), FABRIKAM_TENANT);
    assert_eq!(resolver.home_tenant("cy@fabrikam.test").await.unwrap(), FABRIKAM_TENANT);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "remembered");
    let e = resolver.home_tenant("x@nowhere.test").await.unwrap_err();
    assert!(matches!(e, agentgate::graph::TenantLookupError::Unknown(_, 400)), "{e}");
    let e = resolver.home_tenant("x@evil.test/../fabrikam.test").await.unwrap_err();
    assert!(matches!(e, agentgate::graph::TenantLookupError::NotADomain(_)), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_graph_calls_on_a_cold_cache_share_one_token_chain() {
    let t = setup().await;
    let chat = t.graph.seed_chat(1);
    t.chain.fake.set_delay(Duration::from_millis(100));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (c, id) = (t.client.clone(), chat.clone());
        set.spawn(async move { c.get_chat(&id).await });
    }
    assert!(set.join_all().await.iter().all(Result::is_ok));
    assert_eq!(t.chain.fake.hop_requests(), [1, 1, 1]);
    let seen = t.graph.seen();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| s.bearer == seen[0].bearer));
    assert_eq!(t.client.requests_sent(), 20);
}

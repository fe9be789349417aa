//! A strict fake of the Graph v1.0 Agent ID provisioning endpoints and of the Entra sign-in endpoints
//! (authorize with PKCE, token, client credentials), on 127.0.0.1, with one shared directory.
//!
//! Graph side: every request needs a bearer token this fake issued (401 otherwise); a token carrying
//! `Directory.AccessAsUser.All` gets Graph's 403. Real error shapes: a BlueprintPrincipal does not exist
//! until it is created, and an Agent Identity under a Blueprint without one is refused; an object created
//! moments ago is invisible to the calls that refer to it for `propagation` requests (404 /
//! "does not reference a valid application"); a password credential gets
//! `PropertyNotCompatibleWithAgentIdentity`; duplicate unique names, service principals, UPNs, second Agent
//! Users on one parent and duplicate grants get 409 / 400; UPNs must be on a verified domain; grants need
//! `startTime` and `consentType: Principal`; `assignLicense` needs a usage location. Deleting a user
//! removes its grants. Injected failures are served once, first; hooks run on a matching request.
//!
//! Sign-in side: `GET /{tenant}/oauth2/v2.0/authorize` checks the PKCE parameters (S256 only, a loopback
//! `redirect_uri`) and answers 302 to the redirect with a code and the `state`; `POST …/token` redeems a
//! code once, only with the same `redirect_uri` and a `code_verifier` whose S256 is the challenge.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
pub const ADMIN_ID: &str = "99999999-0000-0000-0000-000000000001";
pub const GRAPH_SP_ID: &str = "99999999-0000-0000-0000-00000000gr00";
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
pub const PUBLIC_CLIENT: &str = "77777777-0000-0000-0000-000000000001";
pub const PROVISIONER_APP: &str = "77777777-0000-0000-0000-000000000002";
/// Azure CLI's app id: its tokens carry `Directory.AccessAsUser.All`.
pub const AZURE_CLI: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
pub const DOMAIN: &str = "contoso.example";

/// A request as the fake saw it (Graph side only).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// After `/v1.0/`, decoded.
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Option<Value>,
}

/// A failure served once instead of a matching request.
#[derive(Clone, Debug)]
pub struct Inject {
    pub method: &'static str,
    /// Ending in `/`: any path under it; else exactly this path.
    pub path_prefix: String,
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

type Hook = Box<dyn FnMut() + Send>;

#[derive(Default)]
pub struct Directory {
    pub apps: Vec<Value>,
    pub sps: Vec<Value>,
    pub users: Vec<Value>,
    pub grants: Vec<Value>,
    pub domains: Vec<Value>,
    /// Requests still refused for an object just created (its id → count).
    young: HashMap<String, u32>,
    /// How many referring requests each new object is invisible to.
    pub propagation: u32,
    pub injected: Vec<Inject>,
    hooks: Vec<(&'static str, String, Hook)>,
    /// A delay before answering a matching request (after its effect is applied).
    pub slow: Option<(&'static str, String, Duration)>,
    pub seen: Vec<Seen>,
    seq: u64,
    tokens: HashMap<String, String>,
    codes: HashMap<String, (String, String, String)>,
    /// Token requests: (grant_type, outcome).
    pub token_requests: Vec<(String, String)>,
    pub authorize_requests: usize,
    device_polls: u32,
    pub licences: Vec<(String, String)>,
}

impl Directory {
    fn id(&mut self, kind: u8) -> String {
        self.seq += 1;
        format!("{kind:02x}{:06x}-1111-4222-8333-{:012x}", self.seq, self.seq)
    }

    /// Whether the object may be referred to now; a young one counts the refusal.
    fn visible(&mut self, id: &str) -> bool {
        match self.young.get_mut(id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        }
    }

    fn born(&mut self, id: &str) {
        if self.propagation > 0 {
            self.young.insert(id.to_owned(), self.propagation);
        }
    }

    pub fn count(&self) -> (usize, usize, usize, usize) {
        let sps = self.sps.iter().filter(|s| s["id"] != GRAPH_SP_ID).count();
        (self.apps.len(), sps, self.users.len(), self.grants.len())
    }
}

pub struct FakeProvisioning {
    pub base: String,
    pub dir: Arc<Mutex<Directory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvisioning {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvisioning {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut d = Directory::default();
        d.sps.push(json!({"id": GRAPH_SP_ID, "appId": GRAPH_APP_ID, "displayName": "Microsoft Graph"}));
        d.domains = vec![
            json!({"id": "contoso.onmicrosoft.example", "isDefault": false, "isVerified": true}),
            json!({"id": DOMAIN, "isDefault": true, "isVerified": true}),
            json!({"id": "unverified.example", "isDefault": false, "isVerified": false}),
        ];
        d.users.clear();
        let dir = Arc::new(Mutex::new(d));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&dir));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, dir, task }
    }

    pub fn graph_base(&self) -> String {
        format!("{}/v1.0", self.base)
    }

    pub fn inject(&self, i: Inject) {
        self.dir.lock().unwrap().injected.push(i);
    }

    pub fn hook(&self, method: &'static str, path_prefix: &str, f: impl FnMut() + Send + 'static) {
        self.dir.lock().unwrap().hooks.push((method, path_prefix.to_owned(), Box::new(f)));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.dir.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> (usize, usize, usize, usize) {
        self.dir.lock().unwrap().count()
    }
}

fn err(status: u16, code: &str, message: &str) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn ok(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn query_of(uri: &Uri) -> HashMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect()
}

/// `prop eq 'value'` clauses of a `$filter`, joined by `and`.
fn filter_clauses(f: &str) -> Vec<(String, String)> {
    f.split(" and ")
        .filter_map(|c| {
            let (k, v) = c.split_once(" eq ")?;
            let v = v.trim().strip_prefix('\'')?.strip_suffix('\'')?.replace("''", "'");
            Some((k.trim().to_owned(), v))
        })
        .collect()
}

fn matches(obj: &Value, clauses: &[(String, String)]) -> bool {
    !clauses.is_empty() && clauses.iter().all(|(k, v)| obj.get(k).and_then(Value::as_str).is_some_and(|o| o.eq_ignore_ascii_case(v)))
}

/// A token this fake issues: JWT-shaped (unsigned), with `scp` or `roles`.
fn mint(d: &mut Directory, client: &str, scp: Option<&str>) -> String {
    let claims = match scp {
        Some(s) => json!({"aud": "https://graph.microsoft.com", "tid": TENANT, "appid": client, "scp": s}),
        None => json!({"aud": "https://graph.microsoft.com", "tid": TENANT, "appid": client, "roles": ["AgentIdentity.Create.All"]}),
    };
    d.seq += 1;
    let t = format!("{}.{}.sig{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(claims.to_string()), d.seq);
    d.tokens.insert(t.clone(), scp.unwrap_or("").to_owned());
    t
}

async fn handle(State(dir): State<Arc<Mutex<Directory>>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    if path.contains("/oauth2/v2.0/") {
        return sign_in(&dir, &method, &uri, &body);
    }
    let Some(rest) = path.strip_prefix("/v1.0/") else { return err(404, "NotFound", "not a Graph v1.0 path") };
    let rest = percent_encoding::percent_decode_str(rest).decode_utf8_lossy().into_owned();
    let query = query_of(&uri);
    let body_json: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(&body).ok() };
    let slow = {
        let mut d = dir.lock().unwrap();
        d.seen.push(Seen { method: method.to_string(), path: rest.clone(), query: query.clone(), body: body_json.clone() });
        let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(scp) = bearer.and_then(|b| d.tokens.get(b).cloned()) else {
            return err(401, "InvalidAuthenticationToken", "Access token is empty or invalid.");
        };
        if scp.contains("Directory.AccessAsUser.All") {
            return err(
                403,
                "Authorization_RequestDenied",
                "Agent APIs do not support calls that include the Directory.AccessAsUser.All permission.",
            );
        }
        // A prefix ending in `/` matches what is under it; any other, the exact path.
        let hit = |p: &str| if p.ends_with('/') { rest.starts_with(p) } else { rest == p };
        if let Some(i) = d.injected.iter().position(|i| i.method == method.as_str() && hit(&i.path_prefix)) {
            let i = d.injected.remove(i);
            return err(i.status, i.code, i.message);
        }
        for (m, p, hook) in d.hooks.iter_mut() {
            if *m == method.as_str() && rest.starts_with(p.as_str()) {
                hook();
            }
        }
        let slow = d.slow.clone().filter(|(m, p, _)| *m == method.as_str() && rest.starts_with(p.as_str())).map(|s| s.2);
        let resp = graph(&mut d, &method, &rest, &query, body_json);
        (resp, slow)
    };
    if let Some(delay) = slow.1 {
        tokio::time::sleep(delay).await;
    }
    slow.0
}

fn graph(d: &mut Directory, method: &Method, path: &str, q: &HashMap<String, String>, body: Option<Value>) -> Response {
    let body = body.unwrap_or(Value::Null);
    if body.get("passwordCredentials").is_some_and(|p| !p.is_null()) || body.get("passwordCredential").is_some_and(|p| !p.is_null()) {
        return err(400, "PropertyNotCompatibleWithAgentIdentity", "Property passwordCredentials is not compatible with agent identity.");
    }
    let filter = q.get("$filter").map(|f| filter_clauses(f)).unwrap_or_default();
    let seg: Vec<&str> = path.split('/').collect();
    let sponsors_ok = |d: &Directory, body: &Value, base_ok: bool| {
        let Some(list) = body.get("sponsors@odata.bind").and_then(Value::as_array) else { return false };
        base_ok
            && !list.is_empty()
            && list.iter().all(|s| {
                s.as_str()
                    .and_then(|s| s.rsplit_once("/users/"))
                    .is_some_and(|(b, id)| b.ends_with("/v1.0") && (id == ADMIN_ID || d.users.iter().any(|u| u["id"] == id)))
            })
    };
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["me"]) => ok(200, json!({"id": ADMIN_ID, "userPrincipalName": format!("admin@{DOMAIN}")})),
        ("GET", ["domains"]) => ok(200, json!({"value": d.domains})),
        // Blueprints.
        ("GET", [one]) if one.starts_with("applications(uniqueName='") => {
            let name = one.trim_start_matches("applications(uniqueName='").trim_end_matches("')").replace("''", "'");
            match d.apps.iter().find(|a| a["uniqueName"] == name.as_str()) {
                Some(a) => ok(200, public_app(a)),
                None => err(
                    404,
                    "Request_ResourceNotFound",
                    &format!("Resource '{name}' does not exist or one of its queried reference-property objects are not present."),
                ),
            }
        }
        ("POST", ["applications", "microsoft.graph.agentIdentityBlueprint"]) => {
            let Some(name) = body.get("displayName").and_then(Value::as_str) else {
                return err(400, "Request_BadRequest", "displayName is required");
            };
            if !sponsors_ok(d, &body, true) {
                return err(400, "Request_BadRequest", "At least one sponsor is required (sponsors@odata.bind).");
            }
            let unique = body.get("uniqueName").and_then(Value::as_str).unwrap_or("").to_owned();
            if !unique.is_empty() && d.apps.iter().any(|a| a["uniqueName"] == unique.as_str()) {
                return err(
                    409,
                    "Request_MultipleObjectsWithSameKeyValue",
                    "Another object with the same value for property uniqueName already exists.",
                );
            }
            let (id, app_id) = (d.id(0xa1), d.id(0xa2));
            let app = json!({"id": id, "appId": app_id, "displayName": name, "uniqueName": unique, "keyCredentials": [], "@odata.type": "#microsoft.graph.agentIdentityBlueprint"});
            d.apps.push(app.clone());
            d.born(&id);
            d.born(&app_id);
            ok(201, app)
        }
        ("GET", ["applications", id]) => match d.apps.iter().find(|a| a["id"] == *id) {
            Some(a) => ok(200, public_app(a)),
            None => err(
                404,
                "Request_ResourceNotFound",
                &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
            ),
        },
        ("PATCH", ["applications", id]) => {
            let id = (*id).to_owned();
            if !d.apps.iter().any(|a| a["id"] == id.as_str()) || !d.visible(&id) {
                return err(
                    404,
                    "Request_ResourceNotFound",
                    &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
                );
            }
            if let Some(keys) = body.get("keyCredentials") {
                let Some(keys) = keys.as_array() else { return err(400, "Request_BadRequest", "keyCredentials must be an array") };
                for k in keys {
                    let der = k.get("key").and_then(Value::as_str).and_then(|b| STANDARD.decode(b).ok());
                    let good = k["type"] == "AsymmetricX509Cert"
                        && k["usage"] == "Verify"
                        && der.is_some_and(|d| d.first() == Some(&0x30) && d.len() > 300);
                    if !good {
                        return err(
                            400,
                            "InvalidKeyCredential",
                            "Key credential is invalid: a certificate (AsymmetricX509Cert, Verify, base64 DER) is required.",
                        );
                    }
                }
                let app = d.apps.iter_mut().find(|a| a["id"] == id.as_str()).unwrap();
                app["keyCredentials"] = json!(keys);
            }
            no_content()
        }
        ("DELETE", ["applications", id]) => {
            let before = d.apps.len();
            d.apps.retain(|a| a["id"] != *id);
            if d.apps.len() == before { err(404, "Request_ResourceNotFound", "does not exist") } else { no_content() }
        }
        // Service principals.
        ("GET", ["servicePrincipals"]) => {
            ok(200, json!({"value": d.sps.iter().filter(|s| matches(s, &filter)).cloned().collect::<Vec<_>>()}))
        }
        ("POST", ["servicePrincipals", "microsoft.graph.agentIdentityBlueprintPrincipal"]) => {
            let Some(app_id) = body.get("appId").and_then(Value::as_str).map(str::to_owned) else {
                return err(400, "Request_BadRequest", "appId is required");
            };
            if !d.apps.iter().any(|a| a["appId"] == app_id.as_str()) || !d.visible(&app_id) {
                return err(
                    400,
                    "Request_BadRequest",
                    &format!("The appId '{app_id}' of the service principal does not reference a valid application object."),
                );
            }
            if d.sps.iter().any(|s| s["appId"] == app_id.as_str()) {
                return err(
                    409,
                    "Request_MultipleObjectsWithSameKeyValue",
                    "Another object with the same value for property appId already exists.",
                );
            }
            let id = d.id(0xb1);
            let sp = json!({"id": id, "appId": app_id, "@odata.type": "#microsoft.graph.agentIdentityBlueprintPrincipal"});
            d.sps.push(sp.clone());
            d.born(&id);
            ok(201, sp)
        }
        ("POST", ["servicePrincipals", "microsoft.graph.agentIdentity"]) => {
            let bp = body.get("agentIdentityBlueprintId").and_then(Value::as_str).unwrap_or("").to_owned();
            let Some(name) = body.get("displayName").and_then(Value::as_str).map(str::to_owned) else {
                return err(400, "Request_BadRequest", "displayName is required");
            };
            if !sponsors_ok(d, &body, true) {
                return err(400, "Request_BadRequest", "At least one sponsor is required (sponsors@odata.bind).");
            }
            if !d.apps.iter().any(|a| a["appId"] == bp.as_str()) {
                return err(400, "Request_BadRequest", &format!("Agent identity blueprint '{bp}' does not exist."));
            }
            let principal = d.sps.iter().find(|s| s["appId"] == bp.as_str()).and_then(|s| s["id"].as_str()).map(str::to_owned);
            let Some(principal) = principal else {
                return err(
                    400,
                    "Request_BadRequest",
                    "The agent identity blueprint has no service principal (agentIdentityBlueprintPrincipal) in this tenant.",
                );
            };
            if !d.visible(&principal) {
                return err(
                    404,
                    "Request_ResourceNotFound",
                    &format!("Resource '{principal}' does not exist or one of its queried reference-property objects are not present."),
                );
            }
            let (id, app_id) = (d.id(0xc1), d.id(0xc2));
            let sp = json!({"id": id, "appId": app_id, "displayName": name, "agentIdentityBlueprintId": bp, "@odata.type": "#microsoft.graph.agentIdentity"});
            d.sps.push(sp.clone());
            d.born(&id);
            ok(201, sp)
        }
        ("GET", ["servicePrincipals", id]) => match d.sps.iter().find(|s| s["id"] == *id) {
            Some(s) => ok(200, s.clone()),
            None => err(404, "Request_ResourceNotFound", "does not exist"),
        },
        ("DELETE", ["servicePrincipals", id]) => {
            let before = d.sps.len();
            d.sps.retain(|s| s["id"] != *id);
            if d.sps.len() == before { err(404, "Request_ResourceNotFound", "does not exist") } else { no_content() }
        }
        // Agent Users.
        ("GET", ["users"]) => ok(200, json!({"value": d.users.iter().filter(|u| matches(u, &filter)).cloned().collect::<Vec<_>>()})),
        ("POST", ["users", "microsoft.graph.agentUser"]) => {
            for f in ["accountEnabled", "displayName", "mailNickname", "userPrincipalName", "identityParentId"] {
                if body.get(f).is_none() {
                    return err(400, "Request_BadRequest", &format!("Property '{f}' is required."));
                }
            }
            let upn = body["userPrincipalName"].as_str().unwrap_or("").to_owned();
            let parent = body["identityParentId"].as_str().unwrap_or("").to_owned();
            let domain = upn.rsplit_once('@').map(|(_, dm)| dm.to_owned()).unwrap_or_default();
            if !d.domains.iter().any(|x| x["id"] == domain.as_str() && x["isVerified"] == true) {
                return err(
                    400,
                    "Request_BadRequest",
                    "The root domain of the specified UPN does not belong to a verified domain of the organization.",
                );
            }
            if !d.sps.iter().any(|s| s["id"] == parent.as_str() && s["agentIdentityBlueprintId"].is_string()) || !d.visible(&parent) {
                return err(
                    404,
                    "Request_ResourceNotFound",
                    &format!("Resource '{parent}' does not exist or one of its queried reference-property objects are not present."),
                );
            }
            if d.users.iter().any(|u| u["identityParentId"] == parent.as_str()) {
                return err(400, "Request_BadRequest", "An agent user already exists for this agent identity.");
            }
            if d.users.iter().any(|u| u["userPrincipalName"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(&upn))) {
                return err(400, "Request_BadRequest", "Another object with the same value for property userPrincipalName already exists.");
            }
            let id = d.id(0xd1);
            let user = json!({"id": id, "userPrincipalName": upn, "displayName": body["displayName"], "identityParentId": parent, "@odata.type": "#microsoft.graph.agentUser"});
            d.users.push(user.clone());
            d.born(&id);
            ok(201, user)
        }
        ("GET", ["users", id]) => match d.users.iter().find(|u| u["id"] == *id) {
            Some(u) => ok(200, u.clone()),
            None => err(404, "Request_ResourceNotFound", "does not exist"),
        },
        ("PATCH", ["users", id]) => {
            let id = (*id).to_owned();
            if !d.users.iter().any(|u| u["id"] == id.as_str()) || !d.visible(&id) {
                return err(
                    404,
                    "Request_ResourceNotFound",
                    &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
                );
            }
            let u = d.users.iter_mut().find(|u| u["id"] == id.as_str()).unwrap();
            if let Some(loc) = body.get("usageLocation") {
                u["usageLocation"] = loc.clone();
            }
            no_content()
        }
        ("POST", ["users", id, "assignLicense"]) => {
            let id = (*id).to_owned();
            let Some(u) = d.users.iter().find(|u| u["id"] == id.as_str()) else {
                return err(404, "Request_ResourceNotFound", "does not exist");
            };
            if u.get("usageLocation").is_none_or(Value::is_null) {
                return err(400, "Request_BadRequest", "License assignment cannot be done for user with invalid usage location.");
            }
            for l in body["addLicenses"].as_array().cloned().unwrap_or_default() {
                let sku = l["skuId"].as_str().unwrap_or("").to_owned();
                if !d.licences.iter().any(|(u, s)| *u == id && *s == sku) {
                    d.licences.push((id.clone(), sku));
                }
            }
            for sku in body["removeLicenses"].as_array().cloned().unwrap_or_default() {
                d.licences.retain(|(u, s)| !(*u == id && Some(s.as_str()) == sku.as_str()));
            }
            ok(200, json!({"id": id}))
        }
        ("DELETE", ["users", id]) => {
            let before = d.users.len();
            d.users.retain(|u| u["id"] != *id);
            d.grants.retain(|g| g["principalId"] != *id);
            d.licences.retain(|(u, _)| u != id);
            if d.users.len() == before { err(404, "Request_ResourceNotFound", "does not exist") } else { no_content() }
        }
        // Grants.
        ("GET", ["oauth2PermissionGrants"]) => {
            ok(200, json!({"value": d.grants.iter().filter(|g| matches(g, &filter)).cloned().collect::<Vec<_>>()}))
        }
        ("POST", ["oauth2PermissionGrants"]) => {
            let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let (client, principal, resource) = (s("clientId"), s("principalId"), s("resourceId"));
            if s("consentType") != "Principal" || s("scope").trim().is_empty() {
                return err(400, "Request_BadRequest", "consentType must be Principal (with a principalId) and scope is required.");
            }
            if s("startTime").is_empty() {
                return err(400, "Request_BadRequest", "startTime is required.");
            }
            if resource != GRAPH_SP_ID {
                return err(400, "Request_BadRequest", "resourceId does not reference a service principal.");
            }
            if !d.sps.iter().any(|x| x["id"] == client.as_str()) || !d.visible(&client) {
                return err(400, "Request_BadRequest", &format!("Principal was not found: clientId '{client}' does not exist."));
            }
            if !d.users.iter().any(|u| u["id"] == principal.as_str()) || !d.visible(&principal) {
                return err(400, "Request_BadRequest", &format!("Principal was not found: principalId '{principal}' does not exist."));
            }
            if d.grants
                .iter()
                .any(|g| g["clientId"] == client.as_str() && g["principalId"] == principal.as_str() && g["resourceId"] == resource.as_str())
            {
                return err(409, "Request_MultipleObjectsWithSameKeyValue", "Permission entry already exists.");
            }
            let id = d.id(0xe1);
            let g = json!({"id": id, "clientId": client, "consentType": "Principal", "principalId": principal, "resourceId": resource, "scope": s("scope")});
            d.grants.push(g.clone());
            ok(201, g)
        }
        ("GET", ["oauth2PermissionGrants", id]) => match d.grants.iter().find(|g| g["id"] == *id) {
            Some(g) => ok(200, g.clone()),
            None => err(404, "Request_ResourceNotFound", "does not exist"),
        },
        ("PATCH", ["oauth2PermissionGrants", id]) => match d.grants.iter_mut().find(|g| g["id"] == *id) {
            Some(g) => {
                g["scope"] = body["scope"].clone();
                no_content()
            }
            None => err(404, "Request_ResourceNotFound", "does not exist"),
        },
        ("DELETE", ["oauth2PermissionGrants", id]) => {
            let before = d.grants.len();
            d.grants.retain(|g| g["id"] != *id);
            if d.grants.len() == before { err(404, "Request_ResourceNotFound", "does not exist") } else { no_content() }
        }
        _ => err(400, "BadRequest", &format!("the fake does not serve {method} /v1.0/{path}")),
    }
}

/// An application as Graph shows it: `keyCredentials` without the key material.
fn public_app(a: &Value) -> Value {
    let mut a = a.clone();
    if let Some(keys) = a.get_mut("keyCredentials").and_then(Value::as_array_mut) {
        for k in keys {
            k["key"] = Value::Null;
        }
    }
    a
}

fn sign_in(dir: &Arc<Mutex<Directory>>, method: &Method, uri: &Uri, body: &Bytes) -> Response {
    let mut d = dir.lock().unwrap();
    let tenant_ok = uri.path().starts_with(&format!("/{TENANT}/"));
    if method == Method::GET && uri.path().ends_with("/authorize") {
        d.authorize_requests += 1;
        let q = query_of(uri);
        let g = |k: &str| q.get(k).cloned().unwrap_or_default();
        let redirect = url::Url::parse(&g("redirect_uri")).ok();
        let loopback = redirect.as_ref().is_some_and(|u| u.scheme() == "http" && u.host_str() == Some("127.0.0.1"));
        if !tenant_ok
            || g("response_type") != "code"
            || g("code_challenge_method") != "S256"
            || g("code_challenge").len() != 43
            || g("state").is_empty()
        {
            return (StatusCode::BAD_REQUEST, "AADSTS900144: bad authorize request").into_response();
        }
        if !loopback {
            return (StatusCode::BAD_REQUEST, "AADSTS50011: the redirect URI does not match").into_response();
        }
        if ![PUBLIC_CLIENT, AZURE_CLI].contains(&g("client_id").as_str())
            || !g("scope").contains("https://graph.microsoft.com/AgentIdentity.Create.All")
        {
            return (StatusCode::BAD_REQUEST, "AADSTS700016: unknown application or scope").into_response();
        }
        d.seq += 1;
        let code = format!("code-{}", d.seq);
        d.codes.insert(code.clone(), (g("code_challenge"), g("redirect_uri"), g("client_id")));
        let mut to = redirect.unwrap();
        to.query_pairs_mut().append_pair("code", &code).append_pair("state", &g("state"));
        return (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response();
    }
    if method == Method::POST && uri.path().ends_with("/devicecode") {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        if !tenant_ok
            || form.get("client_id").map(String::as_str) != Some(PUBLIC_CLIENT)
            || !form.get("scope").is_some_and(|s| s.contains("AgentIdentity.Create.All"))
        {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request"}))).into_response();
        }
        d.device_polls = 0;
        return axum::Json(json!({
            "device_code": "device-code-1", "user_code": "ABCD-EFGH", "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900, "interval": 1,
            "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate."
        }))
        .into_response();
    }
    if method == Method::POST && uri.path().ends_with("/token") {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let g = |k: &str| form.get(k).cloned().unwrap_or_default();
        let grant = g("grant_type");
        let refuse = |d: &mut Directory, why: &str| {
            d.token_requests.push((grant.clone(), format!("refused: {why}")));
            (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "error_description": format!("AADSTS70000: {why}")})))
                .into_response()
        };
        if !tenant_ok {
            return refuse(&mut d, "wrong tenant");
        }
        match grant.as_str() {
            "authorization_code" => {
                let Some((challenge, redirect, client)) = d.codes.remove(&g("code")) else { return refuse(&mut d, "unknown or used code") };
                if redirect != g("redirect_uri") || client != g("client_id") {
                    return refuse(&mut d, "redirect_uri or client_id differs");
                }
                if URL_SAFE_NO_PAD.encode(Sha256::digest(g("code_verifier").as_bytes())) != challenge {
                    return refuse(&mut d, "code_verifier does not match the code_challenge");
                }
                let scp = if client == AZURE_CLI {
                    "Directory.AccessAsUser.All User.Read"
                } else {
                    "AgentIdentity.Create.All AgentIdentityBlueprint.Create User.Read"
                };
                let t = mint(&mut d, &client, Some(scp));
                d.token_requests.push((grant.clone(), "issued".into()));
                axum::Json(json!({"token_type": "Bearer", "access_token": t, "expires_in": 3599})).into_response()
            }
            "urn:ietf:params:oauth:grant-type:device_code" => {
                if g("device_code") != "device-code-1" || g("client_id") != PUBLIC_CLIENT {
                    return refuse(&mut d, "bad device code");
                }
                d.device_polls += 1;
                if d.device_polls < 2 {
                    d.token_requests.push((grant.clone(), "pending".into()));
                    return (
                        StatusCode::BAD_REQUEST,
                        axum::Json(json!({"error": "authorization_pending", "error_description": "AADSTS70016: pending"})),
                    )
                        .into_response();
                }
                let t = mint(&mut d, PUBLIC_CLIENT, Some("AgentIdentity.Create.All User.Read"));
                d.token_requests.push((grant.clone(), "issued".into()));
                axum::Json(json!({"token_type": "Bearer", "access_token": t, "expires_in": 3599})).into_response()
            }
            "client_credentials" => {
                if g("client_id") != PROVISIONER_APP
                    || g("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                    || g("client_assertion").split('.').count() != 3
                    || g("scope") != "https://graph.microsoft.com/.default"
                {
                    return refuse(&mut d, "bad client credentials request");
                }
                let t = mint(&mut d, PROVISIONER_APP, None);
                d.token_requests.push((grant.clone(), "issued".into()));
                axum::Json(json!({"token_type": "Bearer", "access_token": t, "expires_in": 3599})).into_response()
            }
            _ => refuse(&mut d, "unsupported grant_type"),
        }
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

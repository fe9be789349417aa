//! The steps of `provision`, and `status` and `teardown` over the same state.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::api::{Api, GraphFailure, Req, Resp, odata};
use super::config_file::{AgentUserValues, remove_agent_user, replace_file, set_agent_user};
use super::{GRAPH_APP_ID, State, Status, Step, fix_for, state_key};
use crate::entra::CertificateCredential;
use crate::secrets::SecretRef;
use crate::store::{ProvisioningRecord, Store};

/// What `provision` creates, named.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) bot_app_id: String,
    pub(crate) tenant: String,
    pub(crate) blueprint_name: String,
    /// The Blueprint's `uniqueName`: how it is found again without a stored id.
    pub(crate) unique_name: String,
    pub(crate) identity_name: String,
    pub(crate) user_display_name: String,
    pub(crate) mail_nickname: String,
    pub(crate) domain: Option<String>,
    /// The sponsor's object id; default: the signed-in administrator (`/me`).
    pub(crate) sponsor: Option<String>,
    pub(crate) scopes: Vec<String>,
    /// The Agent User gets its mailbox: `mail = true` goes into `[bots.agent_user]` (and [`Plan::scopes`] has
    /// the mail scopes).
    pub(crate) mail: bool,
    /// `(skuId, usageLocation)`.
    pub(crate) licence: Option<(String, String)>,
    pub(crate) certificate: SecretRef,
    pub(crate) key: SecretRef,
    /// The configuration file to write `[bots.agent_user]` into (none: the section is printed).
    pub(crate) config_path: Option<PathBuf>,
}

/// A failed step: Graph's error and what to do.
struct Fail(GraphFailure);

impl From<GraphFailure> for Fail {
    fn from(e: GraphFailure) -> Self {
        Self(e)
    }
}

type StepResult = Result<String, Fail>;

fn local(msg: impl Into<String>) -> Fail {
    Fail(GraphFailure::local(msg))
}

/// `provision`, `status` and `teardown` for one bot in one tenant.
pub(crate) struct Provisioner<'a> {
    pub(crate) api: Api,
    /// `None` in a dry run without a store: nothing is read or saved.
    pub(crate) store: Option<&'a dyn Store>,
    pub(crate) plan: Plan,
}

impl Provisioner<'_> {
    fn key(&self) -> String {
        state_key(&self.plan.bot_app_id, &self.plan.tenant)
    }

    async fn load(&self) -> anyhow::Result<State> {
        let Some(store) = self.store else { return Ok(State { tenant: self.plan.tenant.clone(), ..State::default() }) };
        match store.provisioning(&self.key()).await? {
            Some(r) => serde_json::from_str(&r.state).map_err(|e| anyhow::anyhow!("the saved provisioning state is unreadable: {e}")),
            None => Ok(State { tenant: self.plan.tenant.clone(), ..State::default() }),
        }
    }

    async fn save(&self, st: &State) -> anyhow::Result<()> {
        if self.api.is_dry_run() {
            return Ok(());
        }
        if let Some(store) = self.store {
            let state = serde_json::to_string(st)?;
            store.save_provisioning(ProvisioningRecord { key: self.key(), state, updated_at_ms: crate::store::now_ms() }).await?;
        }
        Ok(())
    }

    /// Run every step; `Ok(true)` when the objects are ready, `Ok(false)` when a step failed (the state says
    /// which, with the error and its fix).
    pub(crate) async fn provision(&self) -> anyhow::Result<bool> {
        let mut st = self.load().await?;
        match st.status {
            Status::Failed => {
                println!("resuming: the last run failed at step {} ({})", st.step.map_or(0, Step::number), st.step.map_or("", Step::title))
            }
            Status::InProgress => println!("resuming an interrupted run"),
            Status::TearingDown => {
                anyhow::bail!("a teardown of these objects did not finish: run `agentgate agent-id teardown` again before provisioning")
            }
            _ => {}
        }
        if self.api.is_dry_run() {
            println!("dry run: these are the requests provision would make; none is sent, nothing is written");
        }
        st.tenant.clone_from(&self.plan.tenant);
        for step in Step::ALL {
            st.status = Status::InProgress;
            st.step = Some(step);
            let result = self.step(step, &mut st).await;
            match result {
                Ok(summary) => {
                    let mark = if self.api.is_dry_run() { "· (dry run)" } else { "✓" };
                    println!("{mark} {}/{} {}: {summary}", step.number(), Step::ALL.len(), step.title());
                    st.step = Step::ALL.get(step.number()).copied();
                    st.error = None;
                    st.fix = None;
                    self.save(&st).await?;
                }
                Err(Fail(e)) => {
                    let fix = fix_for(step, &e);
                    println!("✗ {}/{} {}: {e}", step.number(), Step::ALL.len(), step.title());
                    println!("  fix: {fix}");
                    st.status = Status::Failed;
                    st.error = Some(e.to_string());
                    st.fix = Some(fix);
                    self.save(&st).await?;
                    return Ok(false);
                }
            }
        }
        st.status = Status::Ready;
        st.step = None;
        self.save(&st).await?;
        if !self.api.is_dry_run() {
            println!(
                "ready: Agent User {} (Agent Identity {}, Blueprint {})",
                st.agent_user_upn.as_deref().unwrap_or(""),
                st.agent_identity_app_id.as_deref().unwrap_or(""),
                st.blueprint_app_id.as_deref().unwrap_or("")
            );
            println!(
                "  Teams and its mailbox can take 15 minutes (up to 24 h) to appear for a new user; check with `agentgate token graph`"
            );
        }
        Ok(true)
    }

    async fn step(&self, step: Step, st: &mut State) -> StepResult {
        match step {
            Step::Blueprint => self.blueprint(st).await,
            Step::BlueprintPrincipal => self.blueprint_principal(st).await,
            Step::Certificate => self.certificate(st).await,
            Step::AgentIdentity => self.agent_identity(st).await,
            Step::AgentUser => self.agent_user(st).await,
            Step::PermissionGrant => self.grant(st).await,
            Step::Licence => self.licence(st).await,
            Step::Config => self.config(st),
        }
    }

    /// GET an object by its stored id: `Some` when present, `None` when gone (404). In a dry run the stored
    /// object is taken as present (nothing is sent).
    async fn find_stored(&self, path: String) -> Result<Option<Value>, Fail> {
        if self.api.is_dry_run() {
            println!("# (uses the stored {path}; checked at run time)");
            return Ok(Some(Value::Null));
        }
        let r = self.api.send(&Req::get(path)).await?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            _ => Err(r.error().into()),
        }
    }

    fn bind_user(&self, id: &str) -> String {
        format!("{}/users/{id}", self.api.base())
    }
}

/// The id and appId of a Graph object.
fn ids(body: &Value) -> (Option<String>, Option<String>) {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    (s("id"), s("appId"))
}

/// The path of a `file:` reference (provisioning writes the key only to files).
fn file_of(r: &SecretRef, what: &str) -> Result<PathBuf, Fail> {
    match r {
        SecretRef::File(p) => Ok(p.clone()),
        other => Err(local(format!(
            "--{what} {other}: provision writes the generated {what} to a file, so it must be a file: reference (move it to a keyring or credential afterwards)"
        ))),
    }
}

/// A new RSA-2048 key and a self-signed certificate for it, valid for a year: `(key PEM, cert PEM, cert DER,
/// notBefore, notAfter)` (the times in RFC 3339).
fn generate_certificate(subject: &str) -> Result<(String, String, Vec<u8>, String, String), Fail> {
    use time::format_description::well_known::Rfc3339;
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(|e| local(format!("generating the RSA key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| local(format!("certificate: {e}")))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, subject);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let cert = params.self_signed(&key).map_err(|e| local(format!("signing the certificate: {e}")))?;
    let fmt = |t: time::OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_default();
    Ok((key.serialize_pem(), cert.pem(), cert.der().to_vec(), fmt(params.not_before), fmt(params.not_after)))
}

/// Write `text` to a new file with `mode` (never over an existing one).
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), Fail> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = o.open(path).map_err(|e| local(format!("writing {}: {e}", path.display())))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| local(format!("writing {}: {e}", path.display())))
}

/// The DER of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
    STANDARD.decode(body.chars().filter(|c| !c.is_whitespace()).collect::<String>()).ok()
}

impl Provisioner<'_> {
    async fn sponsor(&self, st: &mut State) -> Result<String, Fail> {
        if let Some(s) = self.plan.sponsor.clone().or_else(|| st.sponsor_id.clone()) {
            st.sponsor_id = Some(s.clone());
            return Ok(s);
        }
        let r = self.api.send(&Req::get("me").q("$select", "id")).await?;
        match ids(&r.body).0 {
            Some(id) if r.ok() => {
                st.sponsor_id = Some(id.clone());
                Ok(id)
            }
            _ => Err(local(format!(
                "no sponsor: the Agent ID objects need a sponsor (a user), and /me answered {} (an app-only sign-in has no user): pass --sponsor <user object id>",
                r.status
            ))),
        }
    }

    async fn blueprint(&self, st: &mut State) -> StepResult {
        if let Some(obj) = st.blueprint_object_id.clone() {
            match self.find_stored(format!("applications/{obj}")).await? {
                Some(_) => return Ok(format!("exists (appId {})", st.blueprint_app_id.as_deref().unwrap_or(""))),
                None => {
                    println!("  the stored Blueprint {obj} is gone from the tenant: looking it up by uniqueName");
                    st.blueprint_object_id = None;
                    st.blueprint_app_id = None;
                }
            }
        }
        let by_name = Req::get(format!("applications(uniqueName='{}')", odata(&self.plan.unique_name))).q("$select", "id,appId");
        let found = self.api.send(&by_name).await?;
        let (obj, app) = if found.ok() {
            ids(&found.body)
        } else if found.status == 404 {
            let sponsor = self.sponsor(st).await?;
            let body = json!({
                "displayName": self.plan.blueprint_name,
                "uniqueName": self.plan.unique_name,
                "sponsors@odata.bind": [self.bind_user(&sponsor)],
            });
            let r = self.api.send(&Req::post("applications/microsoft.graph.agentIdentityBlueprint", body)).await?;
            match r.status {
                200 | 201 => ids(&r.body),
                409 => ids(&self.api.expect(&by_name).await?.body),
                _ => return Err(r.error().into()),
            }
        } else {
            return Err(found.error().into());
        };
        let (Some(obj), Some(app)) = (obj, app) else { return Err(local("Graph's answer has no id or appId for the Blueprint")) };
        st.blueprint_object_id = Some(obj.clone());
        st.blueprint_app_id = Some(app.clone());
        Ok(if found.ok() { format!("found by uniqueName (appId {app})") } else { format!("created (appId {app}, object {obj})") })
    }

    async fn blueprint_principal(&self, st: &mut State) -> StepResult {
        let app = st.blueprint_app_id.clone().ok_or_else(|| local("no Blueprint appId in the state"))?;
        if let Some(id) = st.blueprint_principal_id.clone() {
            if self.find_stored(format!("servicePrincipals/{id}")).await?.is_some() {
                return Ok(format!("exists ({id})"));
            }
            st.blueprint_principal_id = None;
        }
        let lookup = Req::get("servicePrincipals").q("$filter", format!("appId eq '{}'", odata(&app))).q("$select", "id,appId");
        if let Some(id) = self.api.expect(&lookup).await?.values().first().and_then(|v| ids(v).0) {
            st.blueprint_principal_id = Some(id.clone());
            return Ok(format!("found ({id})"));
        }
        let r = self
            .api
            .send_propagating(
                &Req::post("servicePrincipals/microsoft.graph.agentIdentityBlueprintPrincipal", json!({"appId": app})),
                "Blueprint principal",
            )
            .await?;
        let id = match r.status {
            200 | 201 => ids(&r.body).0,
            409 => self.api.expect(&lookup).await?.values().first().and_then(|v| ids(v).0),
            _ => return Err(r.error().into()),
        };
        let id = id.ok_or_else(|| local("Graph's answer has no id for the Blueprint principal"))?;
        st.blueprint_principal_id = Some(id.clone());
        Ok(format!("created ({id})"))
    }

    async fn certificate(&self, st: &mut State) -> StepResult {
        let obj = st.blueprint_object_id.clone().ok_or_else(|| local("no Blueprint object id in the state"))?;
        let key_path = file_of(&self.plan.key, "key")?;
        let cert_path = file_of(&self.plan.certificate, "certificate")?;
        let mut validity = None;
        let (thumb, der) = if key_path.exists() {
            let key_pem = self.plan.key.load().await.map_err(|e| local(e.to_string()))?;
            let cert_pem = self.plan.certificate.load_public().await.map_err(|e| local(e.to_string()))?;
            use secrecy::ExposeSecret as _;
            let cred = CertificateCredential::from_pem(key_pem.expose_secret().as_bytes(), cert_pem.expose_secret().as_bytes(), false)
                .map_err(|e| local(format!("{} and {}: {e}", self.plan.key, self.plan.certificate)))?;
            let der = pem_der(cert_pem.expose_secret()).ok_or_else(|| local(format!("{}: no certificate", self.plan.certificate)))?;
            (cred.thumbprint_hex().to_owned(), der)
        } else if self.api.is_dry_run() {
            println!(
                "# would generate an RSA-2048 key and a self-signed certificate: the key to {} (mode 0600), the certificate to {}",
                key_path.display(),
                cert_path.display()
            );
            ("<thumbprint>".to_owned(), Vec::new())
        } else {
            let (key_pem, cert_pem, der, nb, na) = generate_certificate(&format!("agentgate {}", self.plan.bot_app_id))?;
            // The certificate first: a leftover certificate without its key is replaced; a key is never overwritten.
            if cert_path.exists() {
                std::fs::remove_file(&cert_path).map_err(|e| local(format!("replacing {}: {e}", cert_path.display())))?;
            }
            write_new(&cert_path, &cert_pem, 0o644)?;
            write_new(&key_path, &key_pem, 0o600)?;
            st.key_generated = true;
            validity = Some((nb, na));
            let cred = CertificateCredential::from_pem(key_pem.as_bytes(), cert_pem.as_bytes(), false).map_err(|e| local(e.to_string()))?;
            println!("  generated an RSA-2048 key ({}, mode 0600) and its certificate ({})", key_path.display(), cert_path.display());
            (cred.thumbprint_hex().to_owned(), der)
        };
        st.certificate_ref = Some(self.plan.certificate.to_string());
        st.key_ref = Some(self.plan.key.to_string());
        let name = format!("agentgate {thumb}");
        let current = self
            .api
            .send_propagating(&Req::get(format!("applications/{obj}")).q("$select", "id,keyCredentials"), "Blueprint certificate")
            .await?;
        if !current.ok() && !self.api.is_dry_run() {
            return Err(current.error().into());
        }
        let keys = current.body.get("keyCredentials").and_then(Value::as_array).cloned().unwrap_or_default();
        if keys.iter().any(|k| k.get("displayName").and_then(Value::as_str) == Some(name.as_str())) {
            st.certificate_thumbprint = Some(thumb.clone());
            return Ok(format!("already on the Blueprint (thumbprint {thumb})"));
        }
        if !keys.is_empty() {
            return Err(local(format!(
                "the Blueprint holds {} other credential(s) and not this certificate (thumbprint {thumb}); uploading would replace them, \
                 so provision stops: remove them in the Entra admin center (or restore the key that matches one) and re-run",
                keys.len()
            )));
        }
        let mut cred = json!({
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "key": STANDARD.encode(&der),
            "displayName": name,
        });
        if let Some((nb, na)) = validity {
            cred["startDateTime"] = json!(nb);
            cred["endDateTime"] = json!(na);
        }
        let r = self
            .api
            .send_propagating(&Req::patch(format!("applications/{obj}"), json!({"keyCredentials": [cred]})), "Blueprint certificate")
            .await?;
        if !r.ok() {
            return Err(r.error().into());
        }
        st.certificate_thumbprint = Some(thumb.clone());
        Ok(format!("uploaded the public certificate (thumbprint {thumb})"))
    }

    async fn agent_identity(&self, st: &mut State) -> StepResult {
        let bp = st.blueprint_app_id.clone().ok_or_else(|| local("no Blueprint appId in the state"))?;
        let ours = |v: &Value| v.get("agentIdentityBlueprintId").and_then(Value::as_str).is_some_and(|b| b.eq_ignore_ascii_case(&bp));
        if let Some(obj) = st.agent_identity_object_id.clone() {
            match self.find_stored(format!("servicePrincipals/{obj}")).await? {
                Some(v) if v.is_null() || ours(&v) => {
                    return Ok(format!("exists (appId {})", st.agent_identity_app_id.as_deref().unwrap_or("")));
                }
                _ => {
                    println!("  the stored Agent Identity {obj} is gone (or under another Blueprint): looking it up again");
                    st.agent_identity_object_id = None;
                    st.agent_identity_app_id = None;
                }
            }
        }
        // Not filterable by Blueprint: by name, then checked here.
        let lookup = Req::get("servicePrincipals").q("$filter", format!("displayName eq '{}'", odata(&self.plan.identity_name)));
        let existing = self.api.expect(&lookup).await?.values().into_iter().find(|v| ours(v));
        let (created, body) = match existing {
            Some(v) => (false, v),
            None => {
                let sponsor = self.sponsor(st).await?;
                let body = json!({
                    "displayName": self.plan.identity_name,
                    "agentIdentityBlueprintId": bp,
                    "sponsors@odata.bind": [self.bind_user(&sponsor)],
                });
                let r = self
                    .api
                    .send_propagating(&Req::post("servicePrincipals/microsoft.graph.agentIdentity", body), "Agent Identity")
                    .await?;
                if !r.ok() {
                    return Err(r.error().into());
                }
                (true, r.body)
            }
        };
        let (Some(obj), Some(app)) = ids(&body) else { return Err(local("Graph's answer has no id or appId for the Agent Identity")) };
        st.agent_identity_object_id = Some(obj.clone());
        st.agent_identity_app_id = Some(app.clone());
        Ok(format!("{} (appId {app}, object {obj})", if created { "created" } else { "found" }))
    }

    /// The domain of the Agent User's UPN: `--domain` if verified, else the default verified domain.
    async fn domain(&self) -> Result<String, Fail> {
        let r = self.api.expect(&Req::get("domains").q("$select", "id,isDefault,isVerified")).await?;
        let verified: Vec<Value> = r.values().into_iter().filter(|d| d.get("isVerified").and_then(Value::as_bool) == Some(true)).collect();
        let name = |d: &Value| d.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        if let Some(want) = &self.plan.domain {
            return verified.iter().map(name).find(|d| d.eq_ignore_ascii_case(want)).ok_or_else(|| {
                local(format!(
                    "{want} is not a verified domain of the tenant (verified: {}); the Agent User's UPN must be on one",
                    verified.iter().map(name).collect::<Vec<_>>().join(", ")
                ))
            });
        }
        verified
            .iter()
            .find(|d| d.get("isDefault").and_then(Value::as_bool) == Some(true))
            .or_else(|| verified.first())
            .map(name)
            .ok_or_else(|| local("the tenant has no verified domain for the Agent User's UPN"))
    }

    async fn agent_user(&self, st: &mut State) -> StepResult {
        let parent = st.agent_identity_object_id.clone().ok_or_else(|| local("no Agent Identity in the state"))?;
        let is_ours = |v: &Value| v.get("identityParentId").and_then(Value::as_str).is_some_and(|p| p.eq_ignore_ascii_case(&parent));
        if let Some(id) = st.agent_user_id.clone() {
            match self.find_stored(format!("users/{id}")).await? {
                Some(v) if v.is_null() || is_ours(&v) => return Ok(format!("exists ({})", st.agent_user_upn.as_deref().unwrap_or(&id))),
                _ => {
                    println!("  the stored Agent User {id} is gone: looking it up again");
                    st.agent_user_id = None;
                }
            }
        }
        let upn = format!("{}@{}", self.plan.mail_nickname, self.domain().await?);
        let select = "id,userPrincipalName,identityParentId";
        let by_upn = Req::get("users").q("$filter", format!("userPrincipalName eq '{}'", odata(&upn))).q("$select", select);
        let by_parent = Req::get("users").q("$filter", format!("identityParentId eq '{}'", odata(&parent))).q("$select", select);
        let mut found = None;
        for lookup in [&by_upn, &by_parent] {
            if let Some(v) = self.api.expect(lookup).await?.values().into_iter().next() {
                if !is_ours(&v) {
                    return Err(local(format!("{upn} already belongs to another user: choose another name with --user-name")));
                }
                found = Some(v);
                break;
            }
        }
        let (created, body) = match found {
            Some(v) => (false, v),
            None => {
                let body = json!({
                    "accountEnabled": true,
                    "displayName": self.plan.user_display_name,
                    "mailNickname": self.plan.mail_nickname,
                    "userPrincipalName": upn,
                    "identityParentId": parent,
                });
                let r = self.api.send_propagating(&Req::post("users/microsoft.graph.agentUser", body), "Agent User").await?;
                if !r.ok() {
                    return Err(r.error().into());
                }
                (true, r.body)
            }
        };
        let id = ids(&body).0.ok_or_else(|| local("Graph's answer has no id for the Agent User"))?;
        let upn = body.get("userPrincipalName").and_then(Value::as_str).map_or(upn, str::to_owned);
        st.agent_user_id = Some(id.clone());
        st.agent_user_upn = Some(upn.clone());
        Ok(format!("{} ({upn}, object {id})", if created { "created" } else { "found" }))
    }

    async fn grant(&self, st: &mut State) -> StepResult {
        let client = st.agent_identity_object_id.clone().ok_or_else(|| local("no Agent Identity in the state"))?;
        let user = st.agent_user_id.clone().ok_or_else(|| local("no Agent User in the state"))?;
        let resource = match st.graph_principal_id.clone() {
            Some(id) => id,
            None => {
                let lookup = Req::get("servicePrincipals").q("$filter", format!("appId eq '{GRAPH_APP_ID}'")).q("$select", "id");
                let id = self.api.expect(&lookup).await?.values().first().and_then(|v| ids(v).0);
                let id = id.ok_or_else(|| local("Microsoft Graph's service principal is not in the tenant"))?;
                st.graph_principal_id = Some(id.clone());
                id
            }
        };
        let wanted = self.plan.scopes.join(" ");
        let lookup = Req::get("oauth2PermissionGrants")
            .q("$filter", format!("clientId eq '{}' and principalId eq '{}'", odata(&client), odata(&user)));
        let existing = self
            .api
            .send_propagating(&lookup, "permission grant")
            .await?
            .values()
            .into_iter()
            .find(|g| g.get("resourceId").and_then(Value::as_str) == Some(resource.as_str()));
        if let Some(g) = existing {
            let id = ids(&g).0.unwrap_or_default();
            let have: Vec<String> = g.get("scope").and_then(Value::as_str).unwrap_or("").split_whitespace().map(str::to_owned).collect();
            let mut merged = have.clone();
            for s in &self.plan.scopes {
                if !merged.iter().any(|h| h.eq_ignore_ascii_case(s)) {
                    merged.push(s.clone());
                }
            }
            st.grant_id = Some(id.clone());
            if merged == have {
                st.grant_scope = Some(have.join(" "));
                return Ok(format!("exists ({id}: {})", have.join(" ")));
            }
            let scope = merged.join(" ");
            self.api.expect(&Req::patch(format!("oauth2PermissionGrants/{id}"), json!({"scope": scope}))).await?;
            st.grant_scope = Some(scope.clone());
            return Ok(format!("scopes added ({id}: {scope})"));
        }
        let start = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        let body = json!({
            "clientId": client,
            "consentType": "Principal",
            "principalId": user,
            "resourceId": resource,
            "scope": wanted,
            "startTime": start,
        });
        let r = self.api.send_propagating(&Req::post("oauth2PermissionGrants", body), "permission grant").await?;
        if !r.ok() {
            return Err(r.error().into());
        }
        let id = ids(&r.body).0.unwrap_or_default();
        st.grant_id = Some(id.clone());
        st.grant_scope = Some(wanted.clone());
        Ok(format!("created ({id}: {wanted})"))
    }

    async fn licence(&self, st: &mut State) -> StepResult {
        let Some((sku, location)) = self.plan.licence.clone() else {
            return Ok("skipped (no --licence-sku; Teams needs a licence that includes it)".into());
        };
        let user = st.agent_user_id.clone().ok_or_else(|| local("no Agent User in the state"))?;
        let r = self.api.send_propagating(&Req::patch(format!("users/{user}"), json!({"usageLocation": location})), "licence").await?;
        if !r.ok() {
            return Err(r.error().into());
        }
        let body = json!({"addLicenses": [{"skuId": sku, "disabledPlans": []}], "removeLicenses": []});
        let r = self.api.send_propagating(&Req::post(format!("users/{user}/assignLicense"), body), "licence").await?;
        if !r.ok() {
            return Err(r.error().into());
        }
        st.licence_sku = Some(sku.clone());
        Ok(format!("{sku} assigned (usage location {location})"))
    }

    fn config(&self, st: &mut State) -> StepResult {
        let get = |v: &Option<String>, what: &str| v.clone().ok_or_else(|| local(format!("no {what} in the state")));
        let values = AgentUserValues {
            tenant_id: self.plan.tenant.clone(),
            blueprint_app_id: get(&st.blueprint_app_id, "Blueprint")?,
            agent_identity_id: get(&st.agent_identity_app_id, "Agent Identity")?,
            agent_user_id: get(&st.agent_user_id, "Agent User")?,
            certificate: self.plan.certificate.to_string(),
            key: self.plan.key.to_string(),
            mail: self.plan.mail,
        };
        let Some(path) = &self.plan.config_path else {
            println!(
                "  no configuration file: add to the bot's [[bots]] entry:\n[bots.agent_user]\ntenant_id = \"{}\"\nblueprint_app_id = \"{}\"\nagent_identity_id = \"{}\"\nagent_user_id = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"{}",
                values.tenant_id,
                values.blueprint_app_id,
                values.agent_identity_id,
                values.agent_user_id,
                values.certificate,
                values.key,
                if values.mail { "\nmail = true" } else { "" }
            );
            return Ok("printed".into());
        };
        if self.api.is_dry_run() {
            println!("# would write [bots.agent_user] of bot {} in {}", self.plan.bot_app_id, path.display());
            return Ok("(dry run)".into());
        }
        let text = std::fs::read_to_string(path).map_err(|e| local(format!("reading {}: {e}", path.display())))?;
        let new = set_agent_user(&text, &self.plan.bot_app_id, &values).map_err(|e| local(format!("{}: {e:#}", path.display())))?;
        st.config_written = Some(path.display().to_string());
        if new == text {
            return Ok(format!("{} already up to date", path.display()));
        }
        replace_file(path, &new).map_err(|e| local(format!("{e:#}")))?;
        Ok(format!("written to {}", path.display()))
    }
}

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectStatus {
    pub(crate) step: Step,
    pub(crate) id: Option<String>,
    /// `ok`, `not created`, `MISSING …`, `DRIFT …`, `skipped`.
    pub(crate) state: String,
    pub(crate) drift: bool,
}

impl Provisioner<'_> {
    /// Each object, its id, and whether it still exists as provisioned. `Ok(true)` when ready and no drift.
    pub(crate) async fn status(&self) -> anyhow::Result<bool> {
        let st = self.load().await?;
        let label = match st.status {
            Status::NotStarted => "not started".to_owned(),
            Status::InProgress => format!("in progress (next: step {})", st.step.map_or(0, Step::number)),
            Status::Ready => "ready".to_owned(),
            Status::Failed => format!("failed at step {} ({})", st.step.map_or(0, Step::number), st.step.map_or("", Step::title)),
            Status::TearingDown => "teardown not finished".to_owned(),
        };
        println!("provisioning of bot {} in tenant {}: {label}", self.plan.bot_app_id, self.plan.tenant);
        if let (Some(e), Some(f)) = (&st.error, &st.fix) {
            println!("  error: {e}\n  fix: {f}");
        }
        let mut drift = false;
        for step in Step::ALL {
            let s = self.object_status(step, &st).await;
            drift |= s.drift;
            println!("  {}. {:<38} {:<38} {}", step.number(), step.title(), s.id.as_deref().unwrap_or("-"), s.state);
        }
        if drift {
            println!("drift: objects were changed or deleted in the tenant; `agentgate agent-id provision` recreates what is missing");
        }
        Ok(st.status == Status::Ready && !drift)
    }

    async fn exists(&self, path: String) -> (String, bool) {
        if self.api.is_dry_run() {
            let _ = self.api.send(&Req::get(path)).await;
            return ("(dry run: not checked)".into(), false);
        }
        match self.api.send(&Req::get(path)).await {
            Ok(r) if r.ok() => ("ok".into(), false),
            Ok(r) if r.status == 404 => ("MISSING: deleted in the tenant".into(), true),
            Ok(r) => (format!("unknown ({})", r.error()), false),
            Err(e) => (format!("unknown ({e})"), false),
        }
    }

    async fn object_status(&self, step: Step, st: &State) -> ObjectStatus {
        let (id, path) = match step {
            Step::Blueprint => (st.blueprint_object_id.clone(), st.blueprint_object_id.as_ref().map(|i| format!("applications/{i}"))),
            Step::BlueprintPrincipal => {
                (st.blueprint_principal_id.clone(), st.blueprint_principal_id.as_ref().map(|i| format!("servicePrincipals/{i}")))
            }
            Step::AgentIdentity => {
                (st.agent_identity_object_id.clone(), st.agent_identity_object_id.as_ref().map(|i| format!("servicePrincipals/{i}")))
            }
            Step::AgentUser => (st.agent_user_id.clone(), st.agent_user_id.as_ref().map(|i| format!("users/{i}"))),
            Step::PermissionGrant => (st.grant_id.clone(), st.grant_id.as_ref().map(|i| format!("oauth2PermissionGrants/{i}"))),
            Step::Certificate => {
                let id = st.certificate_thumbprint.clone();
                let (Some(thumb), Some(obj)) = (&id, &st.blueprint_object_id) else {
                    return ObjectStatus { step, id, state: "not created".into(), drift: false };
                };
                let r = self.api.send(&Req::get(format!("applications/{obj}")).q("$select", "id,keyCredentials")).await;
                let state = match r {
                    _ if self.api.is_dry_run() => ("(dry run: not checked)".to_owned(), false),
                    Ok(r) if r.ok() => {
                        let name = format!("agentgate {thumb}");
                        let on = r
                            .body
                            .get("keyCredentials")
                            .and_then(Value::as_array)
                            .is_some_and(|ks| ks.iter().any(|k| k.get("displayName").and_then(Value::as_str) == Some(name.as_str())));
                        if on { ("ok".to_owned(), false) } else { ("MISSING: removed from the Blueprint".to_owned(), true) }
                    }
                    Ok(r) if r.status == 404 => ("MISSING: the Blueprint is gone".to_owned(), true),
                    Ok(r) => (format!("unknown ({})", r.error()), false),
                    Err(e) => (format!("unknown ({e})"), false),
                };
                return ObjectStatus { step, id, state: state.0, drift: state.1 };
            }
            Step::Licence => {
                let state = if st.licence_sku.is_some() { "assigned" } else { "none" };
                return ObjectStatus { step, id: st.licence_sku.clone(), state: state.into(), drift: false };
            }
            Step::Config => {
                let state = st.config_written.as_ref().map_or_else(|| "not written".to_owned(), |p| format!("written to {p}"));
                return ObjectStatus { step, id: st.agent_identity_app_id.clone(), state, drift: false };
            }
        };
        match path {
            None => ObjectStatus { step, id, state: "not created".into(), drift: false },
            Some(p) => {
                let (state, drift) = self.exists(p).await;
                ObjectStatus { step, id, state, drift }
            }
        }
    }

    /// Remove what `provision` created, in reverse order; resumable (each removal is saved). A 404 means
    /// already gone. `Ok(false)` when a removal failed.
    pub(crate) async fn teardown(&self) -> anyhow::Result<bool> {
        let mut st = self.load().await?;
        if st == (State { tenant: self.plan.tenant.clone(), ..State::default() }) {
            println!(
                "nothing to tear down: no provisioning of bot {} in tenant {} is recorded in the store",
                self.plan.bot_app_id, self.plan.tenant
            );
            return Ok(true);
        }
        if self.api.is_dry_run() {
            println!("dry run: these are the requests teardown would make; none is sent, nothing is written");
        }
        st.status = Status::TearingDown;
        self.save(&st).await?;
        if let (Some(path), Some(ai)) = (st.config_written.clone(), st.agent_identity_app_id.clone()) {
            if self.api.is_dry_run() {
                println!("# would remove [bots.agent_user] of bot {} from {path}", self.plan.bot_app_id);
            } else if let Ok(text) = std::fs::read_to_string(&path)
                && let Some(new) = remove_agent_user(&text, &self.plan.bot_app_id, &ai)?
            {
                replace_file(Path::new(&path), &new)?;
                println!("✓ removed [bots.agent_user] from {path}");
            }
            st.config_written = None;
            self.save(&st).await?;
        }
        let removals: [(&str, Option<String>, Req); 6] = [
            (
                "licence",
                st.licence_sku.clone(),
                Req::post(
                    format!("users/{}/assignLicense", st.agent_user_id.as_deref().unwrap_or("")),
                    json!({"addLicenses": [], "removeLicenses": [st.licence_sku.clone().unwrap_or_default()]}),
                ),
            ),
            (
                "permission grant",
                st.grant_id.clone(),
                Req::delete(format!("oauth2PermissionGrants/{}", st.grant_id.as_deref().unwrap_or(""))),
            ),
            ("Agent User", st.agent_user_id.clone(), Req::delete(format!("users/{}", st.agent_user_id.as_deref().unwrap_or("")))),
            (
                "Agent Identity",
                st.agent_identity_object_id.clone(),
                Req::delete(format!("servicePrincipals/{}", st.agent_identity_object_id.as_deref().unwrap_or(""))),
            ),
            (
                "Blueprint principal",
                st.blueprint_principal_id.clone(),
                Req::delete(format!("servicePrincipals/{}", st.blueprint_principal_id.as_deref().unwrap_or(""))),
            ),
            (
                "Blueprint",
                st.blueprint_object_id.clone(),
                Req::delete(format!("applications/{}", st.blueprint_object_id.as_deref().unwrap_or(""))),
            ),
        ];
        for (what, id, req) in removals {
            let Some(id) = id else { continue };
            let r: Resp = match self.api.send(&req).await {
                Ok(r) => r,
                Err(e) => {
                    println!("✗ {what} {id}: {e}");
                    return Ok(false);
                }
            };
            if !r.ok() && r.status != 404 {
                println!("✗ {what} {id}: {}\n  fix: {}", r.error(), fix_for(Step::Blueprint, &r.error()));
                return Ok(false);
            }
            println!("✓ {what} {id}: {}", if r.status == 404 { "already gone" } else { "removed" });
            match what {
                "licence" => st.licence_sku = None,
                "permission grant" => st.grant_id = None,
                "Agent User" => st.agent_user_id = None,
                "Agent Identity" => st.agent_identity_object_id = None,
                "Blueprint principal" => st.blueprint_principal_id = None,
                _ => st.blueprint_object_id = None,
            }
            self.save(&st).await?;
        }
        if st.key_generated {
            let refs: Vec<SecretRef> = [&st.key_ref, &st.certificate_ref].into_iter().flatten().filter_map(|r| r.parse().ok()).collect();
            for r in &refs {
                if let SecretRef::File(p) = r {
                    if self.api.is_dry_run() {
                        println!("# would delete {}", p.display());
                    } else if std::fs::remove_file(p).is_ok() {
                        println!("✓ deleted {}", p.display());
                    }
                }
            }
        }
        if !self.api.is_dry_run()
            && let Some(store) = self.store
        {
            store.delete_provisioning(&self.key()).await?;
        }
        println!("teardown complete");
        Ok(true)
    }
}

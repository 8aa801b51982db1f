//! Management of the registry: devices, tokens, allow-list, certificates,
//! API keys, tenants and the audit log. Every change is audited with its caller.

use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::{
    AllowlistEntry, ApiKey, AuditEntry, AuditQuery, CertStatus, Certificate, Device, DeviceFilter,
    DeviceProfile, EnrolmentToken, LifecycleAction, Page, Permission, Role, validate_serial_number,
    validate_thing_name,
};
use onramp_pki::random_secret;
use onramp_store::NewToken;
use serde::{Deserialize, Serialize};

/// What an operator asks for when creating an enrolment token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    pub serial_number: String,
    /// Defaults to the serial number.
    pub thing_name: Option<String>,
    #[serde(flatten)]
    pub profile: DeviceProfile,
    /// Defaults to the configured token lifetime.
    pub ttl_secs: Option<i64>,
}

/// A new token: the secret is in this value only, and is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: EnrolmentToken,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

fn short_id(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..16])
}

fn bad(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::BadRequest(e.to_string())
}

impl Onramp {
    // ---- API keys and callers ----

    /// Resolves a bearer API key to its caller. Unknown or revoked keys are refused alike.
    /// An address that failed too often lately is refused (429) before the
    /// key is even looked up; failures are audited aggregated per address.
    pub async fn authenticate_api_key(&self, secret: &str, source: &str) -> Result<Caller> {
        let failures = &self.inner.api_key_failures;
        if let Err(retry_after_secs) = failures.check(source, std::time::Instant::now()) {
            let e = ServiceError::TooManyFailures { retry_after_secs };
            self.api_auth_refused(source, &e).await;
            return Err(e);
        }
        let hash = self.inner.hasher.hash(secret);
        match self.inner.store.get_api_key_by_hash(&hash).await? {
            Some(key) if key.revoked_at.is_none() => {
                failures.succeed(source);
                Ok(Caller {
                    tenant: key.tenant,
                    role: key.role,
                    actor: format!("apikey:{}", key.id),
                    source: source.to_string(),
                })
            }
            _ => {
                failures.fail(source, std::time::Instant::now());
                let e = ServiceError::Unauthorized("invalid or revoked API key".into());
                self.api_auth_refused(source, &e).await;
                Err(e)
            }
        }
    }

    pub async fn create_api_key(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
    ) -> Result<CreatedApiKey> {
        caller.require(Permission::ManageApiKeys)?;
        if name.trim().is_empty() || name.len() > 128 {
            return Err(bad("an API key needs a name of 1 to 128 characters"));
        }
        let secret = random_secret("onr_")?;
        let now = now();
        let key = ApiKey {
            id: short_id("key_"),
            tenant: caller.tenant.clone(),
            name: name.to_string(),
            role,
            created_at: now,
            revoked_at: None,
        };
        let audit = caller.audit(
            "apikey.create",
            format!("apikey:{}", key.id),
            format!("role {role}"),
            now,
        );
        self.inner
            .store
            .create_api_key(&key, &self.inner.hasher.hash(&secret), &audit)
            .await?;
        Ok(CreatedApiKey { key, secret })
    }

    pub async fn list_api_keys(&self, caller: &Caller) -> Result<Vec<ApiKey>> {
        caller.require(Permission::ManageApiKeys)?;
        Ok(self.inner.store.list_api_keys(&caller.tenant).await?)
    }

    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> Result<ApiKey> {
        caller.require(Permission::ManageApiKeys)?;
        let now = now();
        let audit = caller.audit("apikey.revoke", format!("apikey:{id}"), String::new(), now);
        Ok(self
            .inner
            .store
            .revoke_api_key(&caller.tenant, id, &audit, now)
            .await?)
    }

    pub async fn create_tenant(&self, caller: &Caller, id: &str) -> Result<()> {
        caller.require(Permission::ManageApiKeys)?;
        validate_thing_name(id)
            .map_err(|e| bad(e.to_string().replace("thing name", "tenant id")))?;
        let now = now();
        let mut audit = caller.audit("tenant.create", format!("tenant:{id}"), String::new(), now);
        audit.tenant = id.to_string();
        Ok(self.inner.store.create_tenant(id, &audit, now).await?)
    }

    pub async fn list_tenants(&self) -> Result<Vec<String>> {
        Ok(self.inner.store.list_tenants().await?)
    }

    // ---- devices ----

    pub async fn list_devices(
        &self,
        caller: &Caller,
        filter: &DeviceFilter,
        page: &Page,
    ) -> Result<Vec<Device>> {
        caller.require(Permission::ReadRegistry)?;
        filter.validate().map_err(bad)?;
        Page::check_limit(page.limit).map_err(bad)?;
        Ok(self
            .inner
            .store
            .list_devices(&caller.tenant, filter, page)
            .await?)
    }

    pub async fn get_device(&self, caller: &Caller, thing_name: &str) -> Result<Device> {
        caller.require(Permission::ReadRegistry)?;
        self.inner
            .store
            .get_device(&caller.tenant, thing_name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("device `{thing_name}` not found")))
    }

    pub async fn patch_device_attributes(
        &self,
        caller: &Caller,
        thing_name: &str,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Device> {
        caller.require(Permission::ManageDevices)?;
        if patch.len() > 100 || patch.keys().any(|k| k.is_empty() || k.len() > 128) {
            return Err(bad(
                "attributes: at most 100 keys per patch, each 1 to 128 characters",
            ));
        }
        let now = now();
        let keys: Vec<&str> = patch.keys().map(String::as_str).collect();
        let audit = caller.audit(
            "device.patch_attributes",
            format!("device:{thing_name}"),
            format!("keys {}", keys.join(",")),
            now,
        );
        Ok(self
            .inner
            .store
            .patch_device_attributes(&caller.tenant, thing_name, patch, &audit, now)
            .await?)
    }

    /// Suspend, reactivate or decommission (which revokes every certificate).
    pub async fn change_device_lifecycle(
        &self,
        caller: &Caller,
        thing_name: &str,
        action: LifecycleAction,
    ) -> Result<Device> {
        caller.require(Permission::ManageDevices)?;
        if action == LifecycleAction::Activate {
            return Err(bad("a device becomes active by enrolling"));
        }
        let now = now();
        let audit = caller.audit(
            &format!("device.{action}"),
            format!("device:{thing_name}"),
            String::new(),
            now,
        );
        Ok(self
            .inner
            .store
            .transition_device(&caller.tenant, thing_name, action, &audit, now)
            .await?)
    }

    // ---- enrolment tokens ----

    pub async fn create_token(&self, caller: &Caller, req: &TokenRequest) -> Result<CreatedToken> {
        caller.require(Permission::ManageEnrolment)?;
        validate_serial_number(&req.serial_number).map_err(bad)?;
        let thing_name = req
            .thing_name
            .clone()
            .unwrap_or_else(|| req.serial_number.clone());
        validate_thing_name(&thing_name).map_err(bad)?;
        let ttl = req.ttl_secs.unwrap_or(self.inner.settings.token_ttl_secs);
        if !(60..=365 * 86_400).contains(&ttl) {
            return Err(bad(
                "token lifetime must be between 60 seconds and 365 days",
            ));
        }
        let secret = random_secret("ont_")?;
        let now = now();
        let id = short_id("tok_");
        let audit = caller.audit(
            "token.create",
            format!("device:{thing_name}"),
            format!("token {id} for serial {}", req.serial_number),
            now,
        );
        let token = self
            .inner
            .store
            .create_token(
                &NewToken {
                    id,
                    tenant: caller.tenant.clone(),
                    token_hash: self.inner.hasher.hash(&secret),
                    serial_number: req.serial_number.clone(),
                    thing_name,
                    profile: req.profile.clone(),
                    expires_at: now + ttl,
                    created_by: caller.actor.clone(),
                },
                &audit,
                now,
            )
            .await?;
        Ok(CreatedToken { token, secret })
    }

    pub async fn list_tokens(&self, caller: &Caller, page: &Page) -> Result<Vec<EnrolmentToken>> {
        caller.require(Permission::ManageEnrolment)?;
        Ok(self.inner.store.list_tokens(&caller.tenant, page).await?)
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<EnrolmentToken> {
        caller.require(Permission::ManageEnrolment)?;
        let now = now();
        let audit = caller.audit("token.revoke", format!("token:{id}"), String::new(), now);
        Ok(self
            .inner
            .store
            .revoke_token(&caller.tenant, id, &audit, now)
            .await?)
    }

    // ---- allow-list ----

    pub async fn allowlist_add(&self, caller: &Caller, serials: &[String]) -> Result<u64> {
        caller.require(Permission::ManageEnrolment)?;
        if serials.is_empty() || serials.len() > 100_000 {
            return Err(bad("give between 1 and 100000 serial numbers"));
        }
        for s in serials {
            validate_serial_number(s).map_err(|e| bad(format!("`{s}`: {e}")))?;
        }
        let now = now();
        let audit = caller.audit(
            "allowlist.add",
            "allowlist".into(),
            format!("{} serial numbers", serials.len()),
            now,
        );
        Ok(self
            .inner
            .store
            .allowlist_add(&caller.tenant, serials, &audit, now)
            .await?)
    }

    /// Imports serial numbers from CSV: the first column of each row; a header
    /// row naming `serial` or `serial_number` is skipped.
    pub async fn allowlist_import_csv(&self, caller: &Caller, csv_text: &str) -> Result<u64> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(csv_text.as_bytes());
        let mut serials = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| bad(format!("CSV line {}: {e}", i + 1)))?;
            let Some(first) = record.get(0) else { continue };
            if first.is_empty() || (i == 0 && matches!(first, "serial" | "serial_number")) {
                continue;
            }
            validate_serial_number(first).map_err(|e| bad(format!("CSV line {}: {e}", i + 1)))?;
            serials.push(first.to_string());
        }
        self.allowlist_add(caller, &serials).await
    }

    pub async fn allowlist_remove(&self, caller: &Caller, serial: &str) -> Result<()> {
        caller.require(Permission::ManageEnrolment)?;
        let audit = caller.audit(
            "allowlist.remove",
            format!("serial:{serial}"),
            String::new(),
            now(),
        );
        Ok(self
            .inner
            .store
            .allowlist_remove(&caller.tenant, serial, &audit)
            .await?)
    }

    pub async fn list_allowlist(
        &self,
        caller: &Caller,
        page: &Page,
    ) -> Result<Vec<AllowlistEntry>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_allowlist(&caller.tenant, page)
            .await?)
    }

    // ---- certificates ----

    pub async fn list_certificates(
        &self,
        caller: &Caller,
        thing_name: Option<&str>,
        status: Option<CertStatus>,
        page: &Page,
    ) -> Result<Vec<Certificate>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self
            .inner
            .store
            .list_certificates(&caller.tenant, thing_name, status, page)
            .await?)
    }

    pub async fn get_certificate(&self, caller: &Caller, serial: &str) -> Result<Certificate> {
        caller.require(Permission::ReadRegistry)?;
        self.inner
            .store
            .get_certificate(serial)
            .await?
            .filter(|c| c.tenant == caller.tenant)
            .ok_or_else(|| ServiceError::NotFound(format!("certificate `{serial}` not found")))
    }

    pub async fn revoke_certificate(
        &self,
        caller: &Caller,
        serial: &str,
        reason: &str,
    ) -> Result<Certificate> {
        caller.require(Permission::RevokeCertificates)?;
        const REASONS: [&str; 6] = [
            "unspecified",
            "keyCompromise",
            "affiliationChanged",
            "superseded",
            "cessationOfOperation",
            "certificateHold",
        ];
        if !REASONS.contains(&reason) {
            return Err(bad(format!(
                "revocation reason must be one of {}",
                REASONS.join(", ")
            )));
        }
        let now = now();
        let audit = caller.audit(
            "certificate.revoke",
            format!("certificate:{serial}"),
            reason.to_string(),
            now,
        );
        let cert = self
            .inner
            .store
            .revoke_certificate(&caller.tenant, serial, reason, &audit, now)
            .await?;
        let _ = self.emit_certificate_revoked(&cert, reason).await;
        Ok(cert)
    }

    // ---- audit ----

    pub async fn query_audit(
        &self,
        caller: &Caller,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>> {
        caller.require(Permission::ReadAudit)?;
        Page::check_limit(query.limit).map_err(bad)?;
        Ok(self.inner.store.query_audit(&caller.tenant, query).await?)
    }
}

//! Artifacts and their signers, against SQLite and against PostgreSQL.

use onramp_domain::job::{JobExecution, JobExecutionStatus};
use onramp_domain::*;
use onramp_store::testing::{scratch_postgres, sqlite_url};
use onramp_store::*;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;
const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn sqlite() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&sqlite_url(dir.path())).await.unwrap();
    (store, Some(dir))
}

async fn postgres() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    (open(&scratch_postgres().await).await.unwrap(), None)
}

fn audit(action: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: DEFAULT_TENANT.into(),
        actor: "test".into(),
        action: action.into(),
        target: "t".into(),
        source: "local".into(),
        outcome: Outcome::Success,
        detail: String::new(),
        at: NOW,
    }
}

fn signer(name: &str) -> SignerRecord {
    SignerRecord {
        tenant: DEFAULT_TENANT.into(),
        name: name.into(),
        algorithm: "ed25519".into(),
        public_key_pem: "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
            .into(),
        created_at: NOW,
        created_by: "test".into(),
    }
}

fn artifact(sha: &str, signature: Option<&str>) -> ArtifactRecord {
    ArtifactRecord {
        tenant: DEFAULT_TENANT.into(),
        sha256: sha.into(),
        name: "fw.bin".into(),
        size: 42,
        signer: signature.map(|_| "vendor".to_string()),
        signature: signature.map(str::to_string),
        created_at: NOW,
        created_by: "test".into(),
    }
}

async fn signers_are_added_once_listed_and_deleted(store: Arc<dyn Store>) {
    store
        .add_signer(&signer("vendor"), &audit("signer.add"))
        .await
        .unwrap();
    let again = store
        .add_signer(&signer("vendor"), &audit("signer.add"))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    store
        .add_signer(&signer("other"), &audit("signer.add"))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_signers(DEFAULT_TENANT)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["other", "vendor"]);
    assert_eq!(
        store.get_signer(DEFAULT_TENANT, "vendor").await.unwrap(),
        Some(signer("vendor"))
    );
    assert!(
        store
            .get_signer("elsewhere", "vendor")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .delete_signer(DEFAULT_TENANT, "vendor", &audit("signer.delete"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_signer(DEFAULT_TENANT, "vendor", &audit("signer.delete"))
            .await
            .unwrap()
    );
    assert!(
        store
            .get_signer(DEFAULT_TENANT, "vendor")
            .await
            .unwrap()
            .is_none()
    );
}

async fn artifacts_are_content_addressed_and_a_signed_upload_signs_an_unsigned_one(
    store: Arc<dyn Store>,
) {
    let first = store
        .put_artifact(&artifact(SHA_A, None), &audit("artifact.upload"))
        .await
        .unwrap();
    assert_eq!(first.signature, None);
    let signed = store
        .put_artifact(&artifact(SHA_A, Some("c2ln")), &audit("artifact.upload"))
        .await
        .unwrap();
    assert_eq!(signed.signature.as_deref(), Some("c2ln"));
    assert_eq!(signed.signer.as_deref(), Some("vendor"));
    // A later upload (signed differently or not at all) keeps the record.
    let kept = store
        .put_artifact(
            &artifact(SHA_A, Some("b3RoZXI=")),
            &audit("artifact.upload"),
        )
        .await
        .unwrap();
    assert_eq!(kept.signature.as_deref(), Some("c2ln"));
    let kept = store
        .put_artifact(&artifact(SHA_A, None), &audit("artifact.upload"))
        .await
        .unwrap();
    assert_eq!(kept.signature.as_deref(), Some("c2ln"));
    store
        .put_artifact(&artifact(SHA_B, None), &audit("artifact.upload"))
        .await
        .unwrap();
    let all = store
        .list_artifacts(DEFAULT_TENANT, &Page::new(None, None))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].sha256, SHA_A);
    assert_eq!(all[0].size, 42);
    let after = store
        .list_artifacts(DEFAULT_TENANT, &Page::new(Some(SHA_A.into()), None))
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert!(
        store
            .get_artifact("elsewhere", SHA_A)
            .await
            .unwrap()
            .is_none()
    );
}

fn job(id: &str, document: &str) -> JobRecord {
    JobRecord {
        tenant: DEFAULT_TENANT.into(),
        job_id: id.into(),
        status: "IN_PROGRESS".into(),
        description: None,
        document: document.into(),
        config: "{}".into(),
        targets: "{}".into(),
        target_selection: "SNAPSHOT".into(),
        created_by: "test".into(),
        created_at: NOW,
        updated_at: NOW,
        completed_at: None,
    }
}

async fn only_live_executions_of_referencing_jobs_grant_an_artifact(store: Arc<dyn Store>) {
    let doc = format!("{{\"url\":\"${{onramp:artifact-url:{SHA_A}}}\"}}");
    let exec = JobExecution::queued("J1", "D1", NOW);
    store
        .create_job(
            &job("J1", &doc),
            std::slice::from_ref(&exec),
            &[],
            &audit("job.create"),
        )
        .await
        .unwrap();
    store
        .create_job(
            &job("J2", "{\"a\":1}"),
            &[JobExecution::queued("J2", "D2", NOW)],
            &[],
            &audit("job.create"),
        )
        .await
        .unwrap();
    let grants = |thing: &'static str, sha: &'static str| {
        let store = store.clone();
        async move {
            store
                .jobs_granting_artifact(DEFAULT_TENANT, thing, sha)
                .await
                .unwrap()
        }
    };
    assert_eq!(grants("D1", SHA_A).await, ["J1"]);
    assert!(
        grants("D2", SHA_A).await.is_empty(),
        "D2's job does not refer to it"
    );
    assert!(
        grants("D1", SHA_B).await.is_empty(),
        "J1 does not refer to B"
    );
    assert!(
        store
            .jobs_granting_artifact(DEFAULT_TENANT, "D1", "%")
            .await
            .unwrap()
            .is_empty()
    );
    let mut canceled = exec.clone();
    canceled.status = JobExecutionStatus::Canceled;
    canceled.version += 1;
    assert!(
        store
            .save_execution(DEFAULT_TENANT, &canceled, Some(exec.version), None)
            .await
            .unwrap()
    );
    assert!(
        grants("D1", SHA_A).await.is_empty(),
        "a canceled execution grants nothing"
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { let (s, _d) = super::sqlite().await; super::$name(s).await }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { let (s, _d) = super::postgres().await; super::$name(s).await }
            )*
        }
    };
}

suite!(
    signers_are_added_once_listed_and_deleted,
    artifacts_are_content_addressed_and_a_signed_upload_signs_an_unsigned_one,
    only_live_executions_of_referencing_jobs_grant_an_artifact,
);

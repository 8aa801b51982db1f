//! SCEP (RFC 8894) against the real server, with certmonger's `scep-submit`
//! (a SCEP client Onramp did not write): GetCACaps, GetCACert with the RA
//! certificate, a PKCSReq whose CertRep certmonger verifies and openssl
//! opens, the token's second use refused, and a PKIOperation that is not a
//! PKIMessage. And the certmonger daemon itself, on the plain-HTTP listener:
//! it enrols with the token as challenge password, is refused the token's
//! second use, renews with a new token; a RenewalReq signed with the
//! certificate it obtained renews, and is refused once that is revoked.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::*;

/// certmonger's helper, where Debian puts it; installed by scripts/services.sh.
/// A missing client fails the test: a skipped interop test proves nothing.
fn scep_submit() -> PathBuf {
    [
        "/usr/lib/certmonger/scep-submit",
        "/usr/libexec/certmonger/scep-submit",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("certmonger's scep-submit is not installed: run scripts/services.sh (apt-get install certmonger)")
}

#[test]
fn certmonger_reads_the_ca_capabilities_and_the_ra_and_ca_certificates() {
    let helper = scep_submit();
    let s = Server::start(backend());
    let url = s.url("/scep");
    let run = |mode: &str| {
        let out = Command::new(&helper)
            .args(["-u", &url, "-R"])
            .arg(&s.root_pem)
            .arg(mode)
            .output()
            .unwrap();
        assert!(out.status.success(), "scep-submit {mode}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let caps = run("-c");
    for cap in [
        "POSTPKIOperation",
        "SHA-256",
        "AES",
        "Renewal",
        "SCEPStandard",
    ] {
        assert!(caps.contains(cap), "{caps}");
    }
    // The RA certificate first, then the CA chain.
    let certs = run("-C");
    let pems: Vec<&str> = certs
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|p| p.contains("BEGIN CERTIFICATE"))
        .collect();
    assert!(pems.len() >= 2, "{certs}");
    let ra = s.path("ra.pem");
    std::fs::write(&ra, pems[0].trim_start()).unwrap();
    let subject = x509_field(&ra, "-subject");
    assert!(subject.contains("SCEP RA"), "{subject}");
    let key = openssl(&["x509", "-in", ra.to_str().unwrap(), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&key.stdout);
    assert!(text.contains("rsaEncryption"), "the RA key is RSA");
    assert!(text.contains("Key Encipherment"), "{text}");
    // It chains to Onramp's root through the issuing CA.
    let chain = s.path("chain.pem");
    let out = s.cli(&["ca", "export", "--chain", "--out", chain.to_str().unwrap()]);
    assert!(out.status.success());
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&s.root_pem)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&ra)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    // The RA key is private on disk.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.data.join("ca/scep-ra.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Not a PKIMessage: refused before anything else.
    let junk = s.path("junk.der");
    std::fs::write(&junk, b"not a pkiMessage").unwrap();
    let r = s.curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/x-pki-message",
        "--data-binary",
        &format!("@{}", junk.display()),
        &s.url("/scep?operation=PKIOperation"),
    ]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s.curl(&[&s.url("/scep?operation=Nonsense")]);
    assert_eq!(r.status, 400);
}

fn sh(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

#[test]
fn a_pkcsreq_with_the_token_as_challenge_password_enrols_once() {
    let helper = scep_submit();
    let s = Server::start(backend());
    let dir = s.path("scep");
    std::fs::create_dir_all(&dir).unwrap();
    let token = s.token("SN-SCEP-1");
    let url = s.url("/scep");
    let chain = dir.join("chain.pem");
    assert!(
        s.cli(&["ca", "export", "--chain", "--out", chain.to_str().unwrap()])
            .status
            .success()
    );
    // The RA certificate, as certmonger fetches it.
    let out = Command::new(&helper)
        .args(["-u", &url, "-R"])
        .arg(&s.root_pem)
        .arg("-C")
        .output()
        .unwrap();
    let certs = String::from_utf8_lossy(&out.stdout).to_string();
    let ra = certs
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .trim_start()
        .to_string();
    std::fs::write(dir.join("ra.pem"), &ra).unwrap();
    // certmonger hands the -r file to libcurl as its trust store in -p
    // mode: the RA certificate first, then the chain to the root.
    std::fs::write(
        dir.join("ra-bundle.pem"),
        format!("{ra}{}", std::fs::read_to_string(&chain).unwrap()),
    )
    .unwrap();
    // The device's key, its CSR with the token as challenge password, and
    // the self-signed certificate that signs the request.
    std::fs::write(
        dir.join("req.cnf"),
        format!(
            "[req]\ndistinguished_name = dn\nattributes = attrs\nprompt = no\n\
             [dn]\nCN = SN-SCEP-1\n[attrs]\nchallengePassword = {token}\n"
        ),
    )
    .unwrap();
    sh(
        &dir,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "req.key",
        ],
    );
    sh(
        &dir,
        &[
            "openssl", "req", "-new", "-key", "req.key", "-config", "req.cnf", "-outform", "DER",
            "-out", "csr.der",
        ],
    );
    sh(
        &dir,
        &[
            "openssl",
            "req",
            "-new",
            "-x509",
            "-key",
            "req.key",
            "-subj",
            "/CN=SN-SCEP-1",
            "-days",
            "1",
            "-outform",
            "DER",
            "-out",
            "self.der",
        ],
    );
    sh(
        &dir,
        &[
            "openssl", "x509", "-inform", "DER", "-in", "self.der", "-out", "self.pem",
        ],
    );
    let submit = |name: &str, txid: &str| {
        sh(
            &dir,
            &[
                "openssl", "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER", "-in",
                "csr.der", "-out", "env.der", "ra.pem",
            ],
        );
        let message = onramp_pki::scep::client_pki_message(
            &std::fs::read_to_string(dir.join("req.key")).unwrap(),
            &std::fs::read(dir.join("self.der")).unwrap(),
            "19",
            txid,
            &[9u8; 16],
            &std::fs::read(dir.join("env.der")).unwrap(),
        )
        .unwrap();
        let der = dir.join(format!("{name}.der"));
        std::fs::write(&der, message).unwrap();
        let r = s.curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-pki-message",
            "--data-binary",
            &format!("@{}", der.display()),
            &s.url("/scep?operation=PKIOperation"),
        ]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-pki-message")
        );
        let reply = dir.join(format!("{name}-reply.der"));
        std::fs::write(&reply, &r.body).unwrap();
        // openssl checks the RA's signature up to Onramp's root and hands
        // back the content: the envelope on success, nothing on failure.
        let mut trust = std::fs::read_to_string(&chain).unwrap();
        trust.push_str(&std::fs::read_to_string(dir.join("ra.pem")).unwrap());
        std::fs::write(dir.join("trust.pem"), trust).unwrap();
        std::fs::write(dir.join("empty.bin"), b"").unwrap();
        Command::new("openssl")
            .current_dir(&dir)
            .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
            .arg(&reply)
            .args([
                "-CAfile",
                "trust.pem",
                "-purpose",
                "any",
                "-out",
                "reply-content.der",
            ])
            .output()
            .unwrap()
    };
    let out = submit("first", "tx-1");
    assert!(out.status.success(), "{out:?}");
    // The envelope opens with the device's key.
    sh(
        &dir,
        &[
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "reply-content.der",
            "-recip",
            "self.pem",
            "-inkey",
            "req.key",
            "-out",
            "p7.der",
        ],
    );
    sh(
        &dir,
        &[
            "openssl",
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "p7.der",
            "-print_certs",
            "-out",
            "issued.pem",
        ],
    );
    let issued = dir.join("issued.pem");
    assert!(x509_field(&issued, "-subject").contains("SN-SCEP-1"));
    let verified = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&s.root_pem)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&issued)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    let certs = s.certs_of("SN-SCEP-1");
    assert_eq!(certs.len(), 1);
    assert_eq!(s.devices_json("SN-SCEP-1")["status"], "active");

    // The same request again (same token, same key) is answered with the
    // same certificate, as EST's retry rule has it; nothing new is issued.
    let again = submit("second", "tx-2");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(s.certs_of("SN-SCEP-1").len(), 1);
    // The token is one-time: another key with it gets a signed FAILURE (a
    // CertRep with empty content: no certificate).
    sh(
        &dir,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "req.key",
        ],
    );
    sh(
        &dir,
        &[
            "openssl", "req", "-new", "-key", "req.key", "-config", "req.cnf", "-outform", "DER",
            "-out", "csr.der",
        ],
    );
    sh(
        &dir,
        &[
            "openssl",
            "req",
            "-new",
            "-x509",
            "-key",
            "req.key",
            "-subj",
            "/CN=SN-SCEP-1",
            "-days",
            "1",
            "-outform",
            "DER",
            "-out",
            "self.der",
        ],
    );
    let refused = submit("third", "tx-3");
    assert!(refused.status.success(), "{refused:?}");
    assert_eq!(std::fs::read(dir.join("reply-content.der")).unwrap(), b"");
    assert_eq!(s.certs_of("SN-SCEP-1").len(), 1);
    let printed = sh(
        &dir,
        &[
            "openssl",
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "third-reply.der",
        ],
    );
    assert!(String::from_utf8_lossy(&printed.stdout).contains("tx-3"));
    assert_eq!(s.certs_of("SN-SCEP-1").len(), 1);
}

/// The certmonger daemon, in the foreground on a private socket (no D-Bus,
/// no systemd), with its state under `dir`; it runs `script` with `getcert`
/// talking to it and exits when the script does. Returns the script's
/// output.
fn certmonger(dir: &std::path::Path, script: &str) -> String {
    for sub in ["requests", "cas", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let out_file = dir.join("script.out");
    let inner = dir.join("script.sh");
    std::fs::write(
        &inner,
        format!("#!/bin/sh\nexec > {} 2>&1\n{script}\n", out_file.display()),
    )
    .unwrap();
    std::fs::set_permissions(&inner, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("certmonger")
        .args(["-n", "-L", "-P"])
        .arg(dir.join("socket"))
        .arg("-c")
        .arg(&inner)
        .env("CERTMONGER_REQUESTS_DIR", dir.join("requests"))
        .env("CERTMONGER_CAS_DIR", dir.join("cas"))
        .env("CERTMONGER_TMPDIR", dir.join("tmp"))
        .output()
        .unwrap();
    assert!(out.status.success(), "certmonger: {out:?}");
    std::fs::read_to_string(&out_file).unwrap_or_default()
}

/// The SCEP RA certificate (the first GetCACert answers with), in PEM.
fn ra_cert(s: &Server, url: &str) -> String {
    let r = s.curl(&[&format!("{url}?operation=GetCACert")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let p7 = s.path("getcacert.p7");
    std::fs::write(&p7, &r.body).unwrap();
    let out = openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        p7.to_str().unwrap(),
        "-print_certs",
    ]);
    // `-print_certs` writes `subject=` before each certificate.
    let pems = String::from_utf8_lossy(&out.stdout).to_string();
    let ra = pems
        .split_inclusive("-----END CERTIFICATE-----\n")
        .find(|p| p.contains("SCEP RA"))
        .unwrap_or_default();
    ra.find("-----BEGIN")
        .map(|i| ra[i..].to_string())
        .unwrap_or_default()
}

/// The status certmonger's `getcert list` shows for a request.
fn getcert_status(listing: &str) -> String {
    listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("status: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn certmonger_enrols_with_the_token_once_and_its_certificate_renews_until_revoked() {
    scep_submit();
    assert!(
        Command::new("certmonger").arg("-v").output().is_ok(),
        "certmonger is not installed: run scripts/services.sh (apt-get install certmonger)"
    );
    // certmonger sends the PKIOperation without the CA file it is given for
    // TLS, so it is pointed at the plain-HTTP listener, as SCEP is usually
    // served: the request and the reply are signed and enveloped.
    let s = Server::start_with(backend(), &[("ONRAMP_PKI__LISTEN", "127.0.0.1:0")], None);
    let plain = std::fs::read_to_string(s.data.join("revocation.addr")).unwrap();
    let url = format!("http://{}/scep", plain.trim());
    let dir = s.path("certmonger");
    let token = s.token("SN-CM-1");
    let (cert, key) = (dir.join("device.pem"), dir.join("device.key"));
    let listing = certmonger(
        &dir,
        &format!(
            "getcert add-scep-ca -c onramp -u {url}\n\
             getcert request -c onramp -I device -f {} -k {} -N CN=SN-CM-1 -L {token} -w --wait-timeout=60\n\
             getcert list -i device\n",
            cert.display(),
            key.display()
        ),
    );
    assert_eq!(getcert_status(&listing), "MONITORING", "{listing}");
    // certmonger wrote the key it generated itself, and the certificate
    // Onramp issued for it, chained to Onramp's root.
    assert!(x509_field(&cert, "-subject").contains("SN-CM-1"));
    let chain = dir.join("chain.pem");
    assert!(
        s.cli(&["ca", "export", "--chain", "--out", chain.to_str().unwrap()])
            .status
            .success()
    );
    let verify = |pem: &std::path::Path| {
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&s.root_pem)
            .arg("-untrusted")
            .arg(&chain)
            .arg(pem)
            .output()
            .unwrap()
    };
    let verified = verify(&cert);
    assert!(verified.status.success(), "{verified:?}");
    let certs = s.certs_of("SN-CM-1");
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(s.devices_json("SN-CM-1")["status"], "active");
    let first_serial = x509_field(&cert, "-serial");

    // The token is one-time: a second request (another key) with it is refused.
    let listing = certmonger(
        &dir,
        &format!(
            "getcert request -c onramp -I again -f {} -k {} -N CN=SN-CM-1 -L {token} -w --wait-timeout=60\n\
             getcert list -i again\n",
            dir.join("again.pem").display(),
            dir.join("again.key").display()
        ),
    );
    assert_eq!(getcert_status(&listing), "CA_REJECTED", "{listing}");
    assert!(!dir.join("again.pem").exists());
    assert_eq!(s.certs_of("SN-CM-1").len(), 1);

    // certmonger renews with a new PKCSReq (a new key, signed with a new
    // self-signed certificate), never a RenewalReq, so with a new token.
    let token = s.token("SN-CM-1");
    let listing = certmonger(
        &dir,
        &format!(
            "getcert rekey -i device -L {token} -w --wait-timeout=60\ngetcert list -i device\n"
        ),
    );
    assert_eq!(getcert_status(&listing), "MONITORING", "{listing}");
    assert_ne!(x509_field(&cert, "-serial"), first_serial);
    let verified = verify(&cert);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(s.certs_of("SN-CM-1").len(), 2);
    let first_serial = x509_field(&cert, "-serial");

    // The RenewalReq is built here, signed with the key and certificate
    // certmonger obtained, the new CSR made with openssl.
    let renew = |name: &str| {
        sh(
            &dir,
            &[
                "openssl",
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-subj",
                "/CN=SN-CM-1",
                "-outform",
                "DER",
                "-out",
                &format!("{name}.csr.der"),
            ],
        );
        std::fs::write(dir.join("ra.pem"), ra_cert(&s, &url)).unwrap();
        sh(
            &dir,
            &[
                "openssl",
                "cms",
                "-encrypt",
                "-binary",
                "-aes256",
                "-outform",
                "DER",
                "-in",
                &format!("{name}.csr.der"),
                "-out",
                &format!("{name}.env.der"),
                "ra.pem",
            ],
        );
        sh(
            &dir,
            &[
                "openssl",
                "x509",
                "-in",
                "device.pem",
                "-outform",
                "DER",
                "-out",
                "device.der",
            ],
        );
        let message = onramp_pki::scep::client_pki_message(
            &std::fs::read_to_string(&key).unwrap(),
            &std::fs::read(dir.join("device.der")).unwrap(),
            "17",
            &format!("renew-{name}"),
            &[7u8; 16],
            &std::fs::read(dir.join(format!("{name}.env.der"))).unwrap(),
        )
        .unwrap();
        let der = dir.join(format!("{name}.der"));
        std::fs::write(&der, message).unwrap();
        let r = s.curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-pki-message",
            "--data-binary",
            &format!("@{}", der.display()),
            &format!("{url}?operation=PKIOperation"),
        ]);
        assert_eq!(r.status, 200, "{}", r.text());
        let reply = dir.join(format!("{name}-reply.der"));
        std::fs::write(&reply, &r.body).unwrap();
        // The RA's signature checks out up to Onramp's root; the content is
        // the envelope (empty on FAILURE).
        let mut trust = std::fs::read_to_string(&chain).unwrap();
        trust.push_str(&std::fs::read_to_string(dir.join("ra.pem")).unwrap());
        std::fs::write(dir.join("trust.pem"), trust).unwrap();
        sh(
            &dir,
            &[
                "openssl",
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                &format!("{name}-reply.der"),
                "-CAfile",
                "trust.pem",
                "-purpose",
                "any",
                "-out",
                &format!("{name}-content.der"),
            ],
        );
        std::fs::read(dir.join(format!("{name}-content.der"))).unwrap()
    };
    let content = renew("renewal");
    assert!(
        !content.is_empty(),
        "SUCCESS carries the certificate: {}",
        s.server_log()
            .lines()
            .filter(|l| l.contains("refused")
                || l.to_lowercase().contains("scep")
                || l.contains("reenroll"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Encrypted to the certificate that signed the request.
    sh(
        &dir,
        &[
            "openssl",
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            "renewal-content.der",
            "-recip",
            cert.to_str().unwrap(),
            "-inkey",
            key.to_str().unwrap(),
            "-out",
            "renewal-p7.der",
        ],
    );
    sh(
        &dir,
        &[
            "openssl",
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            "renewal-p7.der",
            "-print_certs",
            "-out",
            "renewed.pem",
        ],
    );
    let renewed_pem = dir.join("renewed.pem");
    assert!(x509_field(&renewed_pem, "-subject").contains("SN-CM-1"));
    assert_ne!(x509_field(&renewed_pem, "-serial"), first_serial);
    let verified = verify(&renewed_pem);
    assert!(verified.status.success(), "{verified:?}");
    // The renewed certificate is for the new key.
    let pubkey = |args: &[&str]| {
        let out = sh(&dir, args);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        pubkey(&["openssl", "x509", "-in", "renewed.pem", "-noout", "-pubkey"]),
        pubkey(&["openssl", "pkey", "-in", "renewal.key", "-pubout"])
    );
    assert_eq!(s.certs_of("SN-CM-1").len(), 3);

    // A revoked certificate cannot renew itself: FAILURE, nothing issued.
    let signer = x509_field(&cert, "-serial")
        .trim_start_matches("serial=")
        .to_lowercase();
    let out = s.cli(&["cert", "revoke", &signer, "--reason", "keyCompromise"]);
    assert!(out.status.success(), "{out:?}");
    let content = renew("revoked");
    assert!(content.is_empty(), "FAILURE carries no certificate");
    let printed = sh(
        &dir,
        &[
            "openssl",
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "revoked-reply.der",
        ],
    );
    assert!(String::from_utf8_lossy(&printed.stdout).contains("renew-revoked"));
    let log = s.server_log();
    let refusal = log
        .lines()
        .find(|l| l.contains("SCEP request refused") && l.contains("renew-revoked"))
        .unwrap_or_default();
    // The reason, before the transaction's name (which says "revoked" too).
    let reason = refusal.split("transaction").next().unwrap_or_default();
    assert!(reason.contains("revoked"), "{refusal}");
    assert_eq!(s.certs_of("SN-CM-1").len(), 3);
}

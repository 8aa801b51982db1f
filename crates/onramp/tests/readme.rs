//! The README's walk-through, run word for word against a real server.

mod support;

use support::*;

#[test]
fn readme_walkthrough_enrols_a_device() {
    let s = Server::start(Backend::Sqlite);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme
        .split("<!-- walkthrough:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- walkthrough:end -->").next())
        .expect("README has a walk-through block");
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n");
    let work = s.path("walkthrough");
    std::fs::create_dir_all(&work).unwrap();
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let out = std::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("ONRAMP_URL", s.url(""))
        .env("ONRAMP_DATA_DIR", &s.data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walk-through failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("subject=CN = SN-0001"), "{stdout}");
    assert!(stdout.contains("replay: 401"), "{stdout}");
    assert!(stdout.contains("superseded"), "{stdout}");
    assert!(stdout.contains("est.simplereenroll"), "{stdout}");
    assert_eq!(s.devices_json("SN-0001")["status"], "active");
    assert_eq!(s.certs_of("SN-0001").len(), 2);
}

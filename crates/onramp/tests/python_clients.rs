//! How the tests find the Python that runs their clients: `ONRAMP_TEST_PYTHON`,
//! else the project's `.venv/`, else `python3`; and that a missing package
//! fails at once with its fix instead of later on a client's empty output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

#[test]
fn the_interpreter_is_the_variable_then_the_venv_then_python3() {
    let dir = tempfile::tempdir().unwrap();
    let venv_python = dir.path().join("bin/python");
    let chosen = choose_python(Some("/opt/py/bin/python".into()), &venv_python);
    assert_eq!(chosen, PathBuf::from("/opt/py/bin/python"));
    // No venv yet: python3 from the PATH.
    assert_eq!(choose_python(None, &venv_python), PathBuf::from("python3"));
    assert_eq!(
        choose_python(Some("".into()), &venv_python),
        PathBuf::from("python3")
    );
    std::fs::create_dir_all(venv_python.parent().unwrap()).unwrap();
    std::fs::write(&venv_python, "").unwrap();
    assert_eq!(choose_python(None, &venv_python), venv_python);
    assert_eq!(
        choose_python(Some("/opt/py/bin/python".into()), &venv_python),
        PathBuf::from("/opt/py/bin/python")
    );
}

#[test]
fn a_missing_module_is_reported_with_the_command_that_installs_it() {
    let py = python();
    // The positive control: the same interpreter imports the standard library.
    check_python_modules(&py, &["json", "ssl"]).unwrap_or_else(|e| panic!("{e}"));
    let err =
        check_python_modules(&py, &["json", "onramp_no_such_module"]).expect_err("no such module");
    assert!(
        err.contains("No module named 'onramp_no_such_module'"),
        "{err}"
    );
    assert!(err.contains("scripts/services.sh"), "{err}");
    assert!(err.contains(&py.display().to_string()), "{err}");
}

#[test]
fn an_interpreter_that_cannot_start_is_reported_with_the_fix() {
    let err = check_python_modules(Path::new("/nonexistent/bin/python"), &["json"])
        .expect_err("no such interpreter");
    assert!(err.contains("could not be started"), "{err}");
    assert!(err.contains("scripts/services.sh"), "{err}");
}

#[test]
fn python_with_panics_with_the_fix_before_any_client_runs() {
    let panic = std::panic::catch_unwind(|| python_with(&["onramp_no_such_module"]))
        .expect_err("python_with must refuse a missing module");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("scripts/services.sh"), "{msg}");
}

/// The clients' packages are where the tests look, at the pinned versions.
#[test]
fn the_test_python_has_the_pinned_clients() {
    let pins = std::fs::read_to_string(repo_root().join("tests/requirements.txt")).unwrap();
    let pin = |name: &str| {
        pins.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}==")))
            .unwrap_or_else(|| panic!("tests/requirements.txt pins no {name}"))
            .trim()
            .to_string()
    };
    let py = python_with(PAHO);
    assert_eq!(py, python_with(AWS_SDK));
    let out = Command::new(&py)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('paho-mqtt'), m.version('awsiotsdk'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; {PYTHON_FIX}", py.display()));
    let versions = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        versions.split_whitespace().collect::<Vec<_>>(),
        vec![pin("paho-mqtt"), pin("awsiotsdk")],
        "{}; {PYTHON_FIX}",
        py.display()
    );
}

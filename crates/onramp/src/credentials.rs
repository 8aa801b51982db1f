//! The remote server the CLI talks to: `--server`/`--api-key`/`--ca-file`,
//! else `ONRAMP_SERVER`/`ONRAMP_API_KEY`/`ONRAMP_CA_FILE`, else the
//! credentials file written by `onramp login`.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What `onramp login` stores. The CA is stored as PEM text, so the file
/// keeps working when the exported CA file is moved or deleted.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub server: String,
    pub api_key: String,
    pub ca_pem: Option<String>,
}

/// Never prints the API key.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("api_key", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Where the credentials file lives: `$ONRAMP_CREDENTIALS`, else
/// `$XDG_CONFIG_HOME/onramp/credentials.toml`, else
/// `~/.config/onramp/credentials.toml`.
pub fn path() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("ONRAMP_CREDENTIALS") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("onramp").join("credentials.toml"));
    }
    let home = var("HOME").context(
        "cannot place the credentials file: set ONRAMP_CREDENTIALS, XDG_CONFIG_HOME or HOME",
    )?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("onramp")
        .join("credentials.toml"))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Credentials {
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "# Written by `onramp login`; holds an API key: keep it private.\nserver = {}\napi_key = {}\n",
            toml_string(&self.server),
            toml_string(&self.api_key)
        );
        if let Some(ca) = &self.ca_pem {
            s.push_str(&format!("ca_pem = {}\n", toml_string(ca)));
        }
        s
    }

    pub fn from_toml(text: &str) -> Result<Credentials> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .context("the credentials file is not valid")
    }

    /// Reads the file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<Credentials>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Credentials::from_toml(&text)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file with mode 0600 (it holds an API key).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        onramp_pki::write_private_file(path, self.to_toml().as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The server options as given on the command line or in the environment.
#[derive(Default)]
pub struct RemoteArgs {
    pub server: Option<String>,
    pub api_key: Option<String>,
    pub ca_file: Option<PathBuf>,
}

fn read_ca(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the CA file {}", path.display()))
}

/// The server to talk to, if any: flags and environment (clap has merged
/// them already) win over the credentials file, field by field.
pub fn resolve(args: &RemoteArgs, file: Option<Credentials>) -> Result<Option<Credentials>> {
    let file = file.unwrap_or_default();
    let server = args
        .server
        .clone()
        .or_else(|| (!file.server.is_empty()).then(|| file.server.clone()));
    let Some(server) = server else {
        if args.api_key.is_some() || args.ca_file.is_some() {
            anyhow::bail!(
                "--api-key and --ca-file need a server: give --server (or ONRAMP_SERVER), or run `onramp login`"
            );
        }
        return Ok(None);
    };
    // A key or CA stored for another server is not sent to this one.
    let same_server = file.server == server;
    let api_key = match &args.api_key {
        Some(k) => k.clone(),
        None if same_server && !file.api_key.is_empty() => file.api_key.clone(),
        None => anyhow::bail!(
            "no API key for {server}: give --api-key (or ONRAMP_API_KEY), or run `onramp login`"
        ),
    };
    let ca_pem = match &args.ca_file {
        Some(p) => Some(read_ca(p)?),
        None if same_server => file.ca_pem.clone(),
        None => None,
    };
    Ok(Some(Credentials {
        server,
        api_key,
        ca_pem,
    }))
}

pub fn load_ca(path: Option<&Path>) -> Result<Option<String>> {
    path.map(read_ca).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_through_toml_with_awkward_characters() {
        let c = Credentials {
            server: "https://onramp.example:8443".into(),
            api_key: "onr_a\"b\\c".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nAAA=\n-----END CERTIFICATE-----\n".into()),
        };
        assert_eq!(Credentials::from_toml(&c.to_toml()).unwrap(), c);
        assert!(!format!("{c:?}").contains("onr_"), "{c:?}");
    }

    #[test]
    fn flags_win_over_the_file_and_a_key_is_never_sent_to_another_server() {
        let file = Credentials {
            server: "https://a.example".into(),
            api_key: "onr_file".into(),
            ca_pem: Some("PEM".into()),
        };
        let none = RemoteArgs::default();
        let got = resolve(&none, Some(file.clone())).unwrap().unwrap();
        assert_eq!(got, file);

        let key = RemoteArgs {
            api_key: Some("onr_flag".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&key, Some(file.clone())).unwrap().unwrap().api_key,
            "onr_flag"
        );

        let other = RemoteArgs {
            server: Some("https://b.example".into()),
            ..Default::default()
        };
        let err = resolve(&other, Some(file)).unwrap_err().to_string();
        assert!(err.contains("no API key for https://b.example"), "{err}");

        assert!(resolve(&none, None).unwrap().is_none());
        assert!(resolve(&key, None).is_err());
    }
}

//! `schema_registries:` — named schema registries the `decode`, `encode` and
//! `transcode` stages, the `map` stage's `schema: { registry }` and a
//! migration's `transcode:` refer to (see `docs/schemas.md`).

use super::Dur;
use super::azure::EntraCredential;
use super::issues::{Issues, join};
use super::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `schema_registries.<name>:`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchemaRegistryConfig {
    /// A registry with the Confluent Schema Registry REST API (Confluent,
    /// Apicurio's `/apis/ccompat/v7`, Karapace, Redpanda). Messages carry
    /// the Confluent framing: byte 0, the schema id (4 bytes, big-endian),
    /// the Avro record.
    Confluent(ConfluentRegistryConfig),
    /// An Azure Schema Registry: a schema group of an Event Hubs namespace.
    /// Messages are the Avro record alone, with the content type
    /// `avro/binary+<schema id>` (the Event Hubs `content-type` property).
    Azure(AzureRegistryConfig),
}

impl SchemaRegistryConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SchemaRegistryConfig::Confluent(_) => "confluent",
            SchemaRegistryConfig::Azure(_) => "azure",
        }
    }
}

/// `type: confluent`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfluentRegistryConfig {
    /// Base URL: `https://registry:8081`, `http://apicurio:8080/apis/ccompat/v7`.
    pub url: String,
    /// HTTP basic auth (Confluent Cloud: the API key and secret).
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// TLS settings beyond the built-in root certificates.
    #[serde(default)]
    pub tls: Option<RegistryTls>,
    /// Subject of a schema `encode` writes with: `topic_name` (default,
    /// `<topic>-value`), `record_name` (`<record full name>`) or
    /// `topic_record_name` (`<topic>-<record full name>`).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
    /// Timeout of each request. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

/// `type: azure`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AzureRegistryConfig {
    /// The Event Hubs namespace, `NAMESPACE.servicebus.windows.net` (or an
    /// `https://` URL).
    pub namespace: String,
    /// The schema group.
    pub group: String,
    /// The Entra ID credential (role *Schema Registry Reader*, and
    /// *Contributor* to register).
    pub credential: EntraCredential,
    /// TLS settings beyond the built-in root certificates.
    #[serde(default)]
    pub tls: Option<RegistryTls>,
    /// Timeout of each request. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

/// `basic_auth: { username, password }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// As `${VAR}`; never logged.
    pub password: Secret,
}

/// `tls: { ca }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryTls {
    /// A PEM file of CA certificates to trust (a private CA, a test
    /// registry's own certificate).
    pub ca: PathBuf,
}

/// `subject_strategy:` of a Confluent registry.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's default).
    #[default]
    TopicName,
    /// The record's full name (`com.acme.Claim`).
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

fn default_timeout() -> Dur {
    Dur::secs(10)
}

/// The format of framed records (Avro today).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SchemaFormat {
    #[default]
    Avro,
}

/// One registry name, or several.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    pub fn list(&self) -> Vec<&str> {
        match self {
            Names::One(n) => vec![n.as_str()],
            Names::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// An Avro schema given in the config: inline (a YAML/JSON object or a
/// JSON string) or `{ file: PATH }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SchemaSource {
    File {
        /// A file holding the schema's JSON (relative to the working directory).
        file: PathBuf,
    },
    Inline(serde_json::Value),
}

/// A config schema that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaSourceError {
    /// The schema file cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    Unreadable { file: PathBuf, source: std::io::Error },
    /// The text is not an Avro schema this crate can use.
    #[error(transparent)]
    Avro(#[from] crate::avro::AvroError),
}

impl SchemaSource {
    /// The schema's JSON text.
    pub fn text(&self) -> Result<String, SchemaSourceError> {
        match self {
            SchemaSource::File { file } => std::fs::read_to_string(file)
                .map_err(|source| SchemaSourceError::Unreadable { file: file.clone(), source }),
            SchemaSource::Inline(serde_json::Value::String(s)) => Ok(s.clone()),
            SchemaSource::Inline(v) => Ok(v.to_string()),
        }
    }

    /// The schema, read and parsed.
    pub fn load(&self) -> Result<crate::avro::AvroSchema, SchemaSourceError> {
        Ok(crate::avro::AvroSchema::parse(&self.text()?)?)
    }
}

/// `stage: { type: decode, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// The registry, or registries, of the messages: each message is read
    /// by the one whose framing it carries (an `avro/binary+<id>` content
    /// type: the Azure one; byte 0 and an id: the Confluent one), so a
    /// stage reading an entity mid-migration names both.
    pub registry: Names,
    /// `avro` (the default, and the only one today).
    #[serde(default)]
    pub format: SchemaFormat,
    /// A reader schema: records are resolved to it (Avro schema evolution:
    /// fields it adds take their defaults, fields it lacks are left out).
    /// Default: each record as its writer schema has it.
    #[serde(default)]
    pub reader_schema: Option<SchemaSource>,
}

/// `stage: { type: encode, ... }`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// The registry the schema is in; its type decides the framing.
    pub registry: String,
    /// The Avro schema the JSON payloads are written with.
    pub schema: SchemaSource,
    /// Register the schema when the registry does not have it (the
    /// registry checks compatibility: a refusal is `schema_incompatible`).
    /// Default false: the schema must be registered already.
    #[serde(default)]
    pub register: bool,
    /// The Confluent subject, overriding the registry's `subject_strategy`
    /// (whose topic is the `default` output's name on its transport).
    #[serde(default)]
    pub subject: Option<String>,
    /// `avro` (the default, and the only one today).
    #[serde(default)]
    pub format: SchemaFormat,
}

/// `stage: { type: transcode, ... }` and `migrate.transcode`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TranscodeConfig {
    /// A `confluent` registry: the messages' framing and schemas.
    pub from: String,
    /// An `azure` registry: each schema is registered in its group, and
    /// messages leave Azure-framed.
    pub to: String,
}

/// Checks a `registry:` list: each a known registry, at most one of each
/// type (a message is read by the one of its framing's type), not empty.
pub(super) fn registry_list(
    issues: &mut Issues<'_>,
    at: &[&str],
    names: &Names,
    registries: &std::collections::BTreeMap<String, SchemaRegistryConfig>,
) {
    let list = names.list();
    if list.is_empty() {
        issues.error(at, "names no schema registry");
    }
    let mut seen: std::collections::BTreeMap<&str, &str> = Default::default();
    for name in list {
        registry_ref(issues, at, name, &["confluent", "azure"], registries);
        if let Some(r) = registries.get(name)
            && let Some(first) = seen.insert(r.kind(), name)
        {
            issues.error(
                at,
                format!("{first:?} and {name:?} are both {} registries: a message is read by the one of its framing's type, so name one", r.kind()),
            );
        }
    }
}

/// Checks that `name` is a registry of one of `kinds`.
pub(super) fn registry_ref(
    issues: &mut Issues<'_>,
    at: &[&str],
    name: &str,
    kinds: &[&str],
    registries: &std::collections::BTreeMap<String, SchemaRegistryConfig>,
) {
    match registries.get(name) {
        None if issues.unparsed("schema_registries", name) => {}
        None => {
            let hint = super::issues::suggest(name, registries.keys().map(String::as_str));
            issues.error(at, format!("unknown schema registry {name:?}{hint}"));
        }
        Some(r) if !kinds.contains(&r.kind()) => {
            issues.error(
                at,
                format!("schema registry {name:?} is of type {}; this needs {}", r.kind(), kinds.join(" or ")),
            );
        }
        Some(_) => {}
    }
}

impl AzureRegistryConfig {
    /// The registry's base URL: `https://<namespace>`, or the namespace
    /// itself when it is a URL.
    pub fn endpoint(&self) -> String {
        if self.namespace.contains("://") { self.namespace.clone() } else { format!("https://{}", self.namespace) }
    }
}

/// An error at `at` unless `ca` is a readable PEM file with a certificate.
fn check_ca(issues: &mut Issues<'_>, at: &[&str], ca: &std::path::Path) {
    match std::fs::read(ca) {
        Err(e) => issues.error(at, format!("cannot read {}: {e}", ca.display())),
        Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            Ok(_) => issues.error(at, format!("{} holds no PEM certificate", ca.display())),
            Err(e) => issues.error(at, format!("{}: {e}", ca.display())),
        },
    }
}

impl SchemaRegistryConfig {
    pub(super) fn validate(&self, issues: &mut Issues<'_>, name: &str) {
        let at = ["schema_registries", name];
        match self {
            SchemaRegistryConfig::Confluent(c) => {
                match reqwest::Url::parse(&c.url) {
                    Ok(u) if !u.username().is_empty() || u.password().is_some() => issues.error(
                        &join(&at, &["url"]),
                        "credentials in the URL are not kept secret: give them as `basic_auth` (password as ${VAR})",
                    ),
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => issues.error(&join(&at, &["url"]), "must be an http:// or https:// URL"),
                }
                if let Some(t) = &c.tls {
                    check_ca(issues, &join(&at, &["tls", "ca"]), &t.ca);
                }
                if c.timeout.get().is_zero() {
                    issues.error(&join(&at, &["timeout"]), "must be more than 0");
                }
            }
            SchemaRegistryConfig::Azure(a) => {
                let url =
                    if a.namespace.contains("://") { a.namespace.clone() } else { format!("https://{}", a.namespace) };
                match reqwest::Url::parse(&url) {
                    Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
                    _ => issues.error(
                        &join(&at, &["namespace"]),
                        "must be NAMESPACE.servicebus.windows.net or an https:// URL (Entra ID tokens go over TLS only)",
                    ),
                }
                if a.group.trim().is_empty() || a.group.contains('/') {
                    issues.error(&join(&at, &["group"]), "must be a schema group name");
                }
                if let Some(t) = &a.tls {
                    check_ca(issues, &join(&at, &["tls", "ca"]), &t.ca);
                }
                if a.timeout.get().is_zero() {
                    issues.error(&join(&at, &["timeout"]), "must be more than 0");
                }
            }
        }
    }
}

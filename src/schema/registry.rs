//! One client per `schema_registries:` entry, with its caches:
//!
//! - schemas by id: a hit costs nothing; a miss asks the registry (so a
//!   schema registered after start is found the first time a message
//!   carries its id). Ids never change meaning, so entries never expire.
//! - ids by (subject or schema name, Parsing Canonical Form): `encode` and
//!   `transcode` ask the registry once per schema.
//!
//! Every request is counted in `conveyor_schema_registry_requests_total`
//! by outcome (`ok`, `not_found`, `refused`, `auth`, `throttled`,
//! `unavailable`).

use super::confluent::Confluent;
pub use super::http::SetupError;
use super::{SchemaError, subject};
use crate::avro::AvroSchema;
use crate::config::{SchemaRegistryConfig, SubjectStrategy};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Called with (registry, outcome) after every request (the daemon counts
/// them in `conveyor_schema_registry_requests_total`).
pub type RequestHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Which API, and so which framing, a registry has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Confluent,
    Azure,
}

enum Client {
    Confluent(Confluent),
    #[cfg(feature = "eventhubs")]
    Azure(super::azure::Azure),
}

pub struct Registry {
    name: String,
    client: Client,
    strategy: SubjectStrategy,
    schemas: Mutex<HashMap<String, Arc<AvroSchema>>>,
    ids: Mutex<HashMap<(String, String), String>>,
    on_request: Option<RequestHook>,
}

impl Registry {
    /// The client of registry `name`.
    pub fn new(name: &str, cfg: &SchemaRegistryConfig, on_request: Option<RequestHook>) -> Result<Self, SetupError> {
        let (client, strategy) = match cfg {
            SchemaRegistryConfig::Confluent(c) => {
                let http = super::http::client(name, c.timeout.get(), c.tls.as_ref().map(|t| t.ca.as_path()))?;
                let base = reqwest::Url::parse(&c.url)
                    .map_err(|e| SetupError::Client { registry: name.into(), reason: format!("url: {e}") })?;
                let auth = c.basic_auth.as_ref().map(|a| (a.username.clone(), a.password.clone()));
                (Client::Confluent(Confluent { registry: name.into(), http, base, auth }), c.subject_strategy)
            }
            #[cfg(feature = "eventhubs")]
            SchemaRegistryConfig::Azure(a) => {
                let http = super::http::client(name, a.timeout.get(), a.tls.as_ref().map(|t| t.ca.as_path()))?;
                let endpoint = reqwest::Url::parse(&a.endpoint())
                    .map_err(|e| SetupError::Client { registry: name.into(), reason: format!("namespace: {e}") })?;
                let credential = crate::azure::entra_credential(&a.credential)
                    .map_err(|e| SetupError::Credential { registry: name.into(), source: Box::new(e) })?;
                let client =
                    super::azure::Azure { registry: name.into(), http, endpoint, group: a.group.clone(), credential };
                (Client::Azure(client), SubjectStrategy::RecordName)
            }
            #[cfg(not(feature = "eventhubs"))]
            SchemaRegistryConfig::Azure(_) => return Err(SetupError::NoAzure { registry: name.into() }),
        };
        Ok(Registry {
            name: name.into(),
            client,
            strategy,
            schemas: Mutex::default(),
            ids: Mutex::default(),
            on_request,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        match &self.client {
            Client::Confluent(_) => Kind::Confluent,
            #[cfg(feature = "eventhubs")]
            Client::Azure(_) => Kind::Azure,
        }
    }

    fn count<T>(&self, r: &Result<T, SchemaError>, found: bool) {
        let Some(hook) = &self.on_request else { return };
        let outcome = match r {
            Ok(_) if found => "ok",
            Ok(_) => "not_found",
            Err(SchemaError::Unknown { .. } | SchemaError::Unregistered { .. }) => "not_found",
            Err(SchemaError::Auth { .. }) => "auth",
            Err(SchemaError::Throttled { .. }) => "throttled",
            Err(SchemaError::Unavailable { .. }) => "unavailable",
            Err(_) => "refused",
        };
        hook(&self.name, outcome);
    }

    /// Schema `id` (a Confluent number or an Azure id), from the cache or
    /// the registry.
    pub async fn schema(&self, id: &str) -> Result<Arc<AvroSchema>, SchemaError> {
        if let Some(s) = self.schemas.lock().unwrap().get(id) {
            return Ok(s.clone());
        }
        let text = match &self.client {
            Client::Confluent(c) => {
                let n = id.parse::<u32>().map_err(|_| SchemaError::Unknown {
                    registry: self.name.clone(),
                    id: id.into(),
                    hint: Some("Confluent schema ids are numbers".into()),
                })?;
                c.schema_by_id(n).await
            }
            #[cfg(feature = "eventhubs")]
            Client::Azure(a) => a.schema_by_id(id).await,
        };
        self.count(&text, true);
        let schema = Arc::new(AvroSchema::parse(&text?).map_err(|reason| SchemaError::Decode {
            id: Some(id.into()),
            reason: format!("the registry's schema {id}: {reason}"),
        })?);
        self.schemas.lock().unwrap().insert(id.into(), schema.clone());
        Ok(schema)
    }

    /// The subject (Confluent) or schema name (Azure) that `schema` is
    /// registered under when written to `topic`.
    pub fn subject(&self, topic: &str, schema: &AvroSchema) -> Result<String, SchemaError> {
        let name = schema.full_name();
        let refused = |reason: String| SchemaError::Incompatible { id: None, reason };
        match self.kind() {
            Kind::Confluent => {
                subject::subject(self.strategy, topic, name.as_deref()).map_err(|e| refused(e.to_string()))
            }
            Kind::Azure => name.ok_or_else(|| refused("an Azure schema's top level must be a named type".into())),
        }
    }

    /// The id of `schema` under `subject`: registered when `register`,
    /// otherwise it must be there already.
    pub async fn id_for(&self, subject: &str, schema: &AvroSchema, register: bool) -> Result<String, SchemaError> {
        // by text: the canonical form drops defaults, docs and logical types,
        // which a registry may keep apart
        let key = (subject.to_string(), schema.text().to_string());
        if let Some(id) = self.ids.lock().unwrap().get(&key) {
            return Ok(id.clone());
        }
        let text = schema.text();
        let found: Result<Option<String>, SchemaError> = match (&self.client, register) {
            (Client::Confluent(c), true) => c.register(subject, text).await.map(|id| Some(id.to_string())),
            (Client::Confluent(c), false) => c.lookup(subject, text).await.map(|id| id.map(|i| i.to_string())),
            #[cfg(feature = "eventhubs")]
            (Client::Azure(a), true) => a.register(subject, text).await.map(Some),
            #[cfg(feature = "eventhubs")]
            (Client::Azure(a), false) => a.lookup(subject, text).await,
        };
        self.count(&found, found.as_ref().is_ok_and(Option::is_some));
        let Some(id) = found? else { return Err(self.not_registered(subject, schema).await) };
        self.ids.lock().unwrap().insert(key, id.clone());
        self.schemas.lock().unwrap().entry(id.clone()).or_insert_with(|| Arc::new(schema.clone()));
        Ok(id)
    }

    /// Why `schema` cannot be used under `subject` without registering it:
    /// incompatible with the subject's latest version (Confluent's check), or
    /// only not registered yet.
    async fn not_registered(&self, subject: &str, schema: &AvroSchema) -> SchemaError {
        let passes = |e: &SchemaError| e.is_outage() || matches!(e, SchemaError::Auth { .. });
        let (compatible, versions) = match &self.client {
            Client::Confluent(c) => {
                let r = c.compatible(subject, schema.text()).await;
                self.count(&r, true);
                let compatible = match r {
                    Ok(ok) => Some(ok),
                    Err(e) if passes(&e) => return e,
                    Err(_) => None,
                };
                (compatible, self.versions(subject).await.unwrap_or_default())
            }
            #[cfg(feature = "eventhubs")]
            Client::Azure(_) => (None, vec![]),
        };
        match compatible {
            Some(false) => SchemaError::Incompatible {
                id: None,
                reason: format!(
                    "the schema is not registered under {subject:?} and is incompatible with its latest version (versions: {versions:?})"
                ),
            },
            _ => SchemaError::Unregistered {
                registry: self.name.clone(),
                subject: format!("{subject:?}"),
                hint: format!(
                    "the schema is not registered there (versions: {versions:?}); register it, or set `register: true`"
                ),
            },
        }
    }

    /// The versions of Confluent `subject` (empty for an Azure registry).
    async fn versions(&self, subject: &str) -> Result<Vec<u32>, SchemaError> {
        match &self.client {
            Client::Confluent(c) => {
                let r = c.versions(subject).await;
                self.count(&r, true);
                r
            }
            #[cfg(feature = "eventhubs")]
            Client::Azure(_) => Ok(vec![]),
        }
    }
}

/// Every configured registry, by name.
#[derive(Default, Clone)]
pub struct Registries(BTreeMap<String, Arc<Registry>>);

impl Registries {
    pub fn build(
        cfg: &BTreeMap<String, SchemaRegistryConfig>,
        on_request: Option<RequestHook>,
    ) -> Result<Self, SetupError> {
        cfg.iter()
            .map(|(name, c)| Ok((name.clone(), Arc::new(Registry::new(name, c, on_request.clone())?))))
            .collect::<Result<_, _>>()
            .map(Registries)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Registry>> {
        self.0.get(name).cloned()
    }
}

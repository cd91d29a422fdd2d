//! A client of the Confluent Schema Registry REST API (also served by
//! Apicurio's `/apis/ccompat/v7`, Karapace and Redpanda): the calls the
//! codec needs, with basic auth.
//!
//! | call | used for |
//! |---|---|
//! | `GET /schemas/ids/{id}` | a writer schema, by the id in a message |
//! | `POST /subjects/{subject}/versions` | registering (the registry checks compatibility: 409) |
//! | `POST /subjects/{subject}` | the id of an already registered schema |
//! | `POST /compatibility/subjects/{subject}/versions/latest` | why an unregistered schema cannot be used |
//! | `GET /subjects/{subject}/versions` | the versions of a subject |

use super::SchemaError;
use super::http::{Status, body_text, not_found, status, unexpected, unreachable};
use crate::config::Secret;
use serde::Deserialize;
use serde_json::json;

const MEDIA: &str = "application/vnd.schemaregistry.v1+json";

pub(super) struct Confluent {
    pub registry: String,
    pub http: reqwest::Client,
    pub base: reqwest::Url,
    pub auth: Option<(String, Secret)>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
}

impl Confluent {
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, SchemaError> {
        let req = req.header(reqwest::header::ACCEPT, MEDIA);
        let req = match &self.auth {
            Some((user, password)) => req.basic_auth(user, Some(password.expose())),
            None => req,
        };
        req.send().await.map_err(|e| unreachable(&self.registry, &e))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, SchemaError> {
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&self.registry, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| SchemaError::Refused {
            registry: self.registry.clone(),
            status: code,
            reason: format!("unexpected answer ({e}): {}", crate::text::clip_bytes(&bytes, 512)),
        })
    }

    /// The text of schema `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, SchemaError> {
        let resp = self.send(self.http.get(self.url(&["schemas", "ids", &id.to_string()]))).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => {
                let a: SchemaAnswer = self.json(resp).await?;
                match a.schema_type.as_deref() {
                    None | Some("AVRO") => Ok(a.schema),
                    Some(other) => Err(SchemaError::Decode {
                        id: Some(id.to_string()),
                        reason: format!("schema {id} is of type {other}; only AVRO is decoded"),
                    }),
                }
            }
            Status::NotFound => {
                not_found(&self.registry, resp, &["40403"]).await?;
                Err(SchemaError::Unknown { registry: self.registry.clone(), id: id.to_string(), hint: None })
            }
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// Registers `schema` under `subject` (or finds it there) and returns
    /// its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, SchemaError> {
        let body = json!({ "schema": schema });
        let resp = self.send(self.http.post(self.url(&["subjects", subject, "versions"])).json(&body)).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => Ok(self.json::<IdAnswer>(resp).await?.id),
            Status::Refused => Err(SchemaError::Incompatible {
                id: None,
                reason: format!("subject {subject:?} refuses the schema: {}", body_text(resp).await),
            }),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// The id of `schema` when it is registered under `subject`.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<u32>, SchemaError> {
        let body = json!({ "schema": schema });
        let resp = self.send(self.http.post(self.url(&["subjects", subject])).json(&body)).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => Ok(Some(self.json::<IdAnswer>(resp).await?.id)),
            // subject or schema not found (Apicurio says 40401 for both)
            Status::NotFound => not_found(&self.registry, resp, &["40401", "40403"]).await.map(|()| None),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// Whether `schema` is compatible with the latest version of `subject`
    /// (a subject without versions accepts anything).
    pub async fn compatible(&self, subject: &str, schema: &str) -> Result<bool, SchemaError> {
        let body = json!({ "schema": schema });
        let url = self.url(&["compatibility", "subjects", subject, "versions", "latest"]);
        let resp = self.send(self.http.post(url).json(&body)).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => Ok(self.json::<Compatibility>(resp).await?.is_compatible),
            // no such subject or no version yet: anything goes
            Status::NotFound => not_found(&self.registry, resp, &["40401", "40402"]).await.map(|()| true),
            Status::Refused => Ok(false),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }

    /// The versions of `subject` (empty when it does not exist).
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, SchemaError> {
        let resp = self.send(self.http.get(self.url(&["subjects", subject, "versions"]))).await?;
        match status(resp.status().as_u16()) {
            Status::Ok => self.json(resp).await,
            Status::NotFound => not_found(&self.registry, resp, &["40401"]).await.map(|()| vec![]),
            _ => Err(unexpected(&self.registry, resp).await),
        }
    }
}

use super::*;

const GOOD: &str = r#"
service: { name: conveyor, http: { listen: "127.0.0.1:0" }, shutdown_grace: 30s, log: { format: json, level: info } }
transports:
  local: { type: embedded }
entities:
  orders.in:  { transport: local, partitions: 4 }
  orders.out: { transport: local, partitions: 4 }
  orders.dlq: { transport: local }
workers:
  orders-forward:
    input: orders.in
    consumer_group: orders-forward
    stage: { type: passthrough }
    outputs: { default: orders.out }
    dead_letter: orders.dlq
    concurrency: 4
"#;

fn load(text: &str) -> Result<Loaded, ConfigError> {
    load_str(text, Path::new("c.yaml"), |v| match v {
        "PARTS" => Some("8".into()),
        _ => None,
    })
}

#[test]
fn good_config_loads_with_defaults() {
    let l = load(GOOD).unwrap();
    let w = &l.config.workers["orders-forward"];
    assert_eq!(w.concurrency, 4);
    assert_eq!(w.batch_size, 500);
    assert_eq!(l.config.service.shutdown_grace.get().as_secs(), 30);
    assert_eq!(l.config.entities["orders.dlq"].partitions, 1);
    assert!(matches!(l.config.transports["local"], TransportConfig::Embedded { path: None, .. }));
}

#[test]
fn typo_in_entity_names_line_path_and_suggestion() {
    let bad = GOOD.replace("input: orders.in\n", "input: orders.inn\n");
    let e = load(&bad).unwrap_err();
    assert_eq!(e.issues.len(), 1, "{e}");
    let s = e.issues[0].to_string();
    assert_eq!(
        s,
        "c.yaml:11:5: workers.orders-forward.input: unknown entity \"orders.inn\" (did you mean \"orders.in\"?)"
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let bad = GOOD
        .replace("input: orders.in\n", "input: orders.inn\n")
        .replace("orders.out: { transport: local", "orders.out: { transport: locl")
        .replace("concurrency: 4", "concurency: 4")
        .replace("shutdown_grace: 30s", "shutdown_grace: soon");
    let e = load(&bad).unwrap_err();
    let all = e.to_string();
    assert!(all.contains("service.shutdown_grace: invalid duration"), "{all}");
    assert!(
        all.contains("entities.orders.out.transport: unknown transport \"locl\" (did you mean \"local\"?)"),
        "{all}"
    );
    assert!(all.contains("workers.orders-forward.concurency: unknown field (did you mean \"concurrency\"?)"), "{all}");
    // the worker with an unknown field is not deserialized, so its input is not checked
    assert_eq!(e.issues.len(), 3, "{all}");
    // each names a line
    assert!(e.issues.iter().all(|i| i.pos.is_some()), "{all}");
}

#[test]
fn unknown_stage_kind_is_named() {
    let bad = GOOD.replace("type: passthrough", "type: passthru");
    let e = load(&bad).unwrap_err().to_string();
    assert!(e.contains("unknown kind \"passthru\" (did you mean \"passthrough\"?)"), "{e}");
    assert!(e.contains("c.yaml:13:14: workers.orders-forward.stage.type"), "{e}");
}

#[test]
fn interpolation_with_defaults_and_missing_vars() {
    let text = GOOD
        .replace("partitions: 4 }\n  orders.out", "partitions: ${PARTS} }\n  orders.out")
        .replace("level: info", "level: ${LEVEL:-debug}");
    let l = load(&text).unwrap();
    assert_eq!(l.config.entities["orders.in"].partitions, 8);
    assert_eq!(l.config.service.log.level, "debug");
    let e = load(&GOOD.replace("name: conveyor", "name: ${NAME}")).unwrap_err().to_string();
    assert!(e.contains("c.yaml:2:18: environment variable NAME is not set"), "{e}");
}

#[test]
fn yaml_syntax_error_has_position() {
    let e = load("transports: [\n").unwrap_err();
    assert_eq!(e.issues.len(), 1);
    assert!(e.issues[0].pos.is_some(), "{e}");
    assert!(e.to_string().contains("not valid YAML"), "{e}");
}

#[test]
fn semantic_checks() {
    let bad = GOOD
        .replace("dead_letter: orders.dlq", "dead_letter: orders.in")
        .replace("concurrency: 4", "concurrency: 0\n  second:\n    input: orders.in\n    consumer_group: orders-forward\n    outputs: { default: orders.in }");
    let e = load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("workers.orders-forward.dead_letter: the dead-letter entity cannot be the worker's input"),
        "{e}"
    );
    assert!(e.contains("workers.orders-forward.concurrency: must be between 1 and 10000"), "{e}");
    assert!(e.contains("workers.second.consumer_group: consumer group \"orders-forward\""), "{e}");
    assert!(e.contains("workers.second.outputs.default: an output cannot be the worker's own input"), "{e}");
}

#[test]
fn warnings_do_not_fail() {
    let l = load(GOOD).unwrap();
    let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert!(w.iter().any(|w| w.contains("entities.orders.out: no worker consumes")), "{w:?}");
}

#[test]
fn hash_changes_with_content() {
    let a = load(GOOD).unwrap().hash;
    let b = load(&GOOD.replace("concurrency: 4", "concurrency: 2")).unwrap().hash;
    assert_ne!(a, b);
}

#[test]
fn blob_locations_are_checked_the_same_for_checkpoints_and_uploads() {
    let eh = GOOD.replace(
        "  local: { type: embedded }",
        r#"  local: { type: embedded }
  hubs:
    type: eventhubs
    connection_string: "Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=x"
    checkpoint_store: { type: blob, connection_string: "UseDevelopmentStorage=true", container: Bad_Name }"#,
    );
    let e = load(&eh).unwrap_err().to_string();
    assert!(e.contains("transports.hubs.checkpoint_store.container"), "{e}");
    let typo = eh.replace("container: Bad_Name", "containr: ok");
    assert!(load(&typo).unwrap_err().to_string().contains("containr"));
    let upload = GOOD.replace(
        "stage: { type: passthrough }",
        r#"stage: { type: upload, name: "{{id}}", target: { type: blob, endpoint: "https://a.blob.core.windows.net", container: files } }"#,
    );
    let e = load(&upload).unwrap_err().to_string();
    assert!(e.contains("workers.orders-forward.stage.target") && e.contains("credential"), "{e}");
}

#[test]
fn a_second_document_is_reported_with_its_line() {
    let e = load(&format!("{GOOD}---\nworkers: {{}}\n")).unwrap_err();
    assert_eq!(e.issues.len(), 1, "{e}");
    let i = &e.issues[0];
    assert_eq!(i.pos.map(|p| p.0), Some(GOOD.lines().count() + 1), "{e}");
    assert!(i.message.contains("second YAML document"), "{e}");
}

#[test]
fn a_transport_that_does_not_parse_is_reported_once_not_for_every_entity() {
    let bad = GOOD.replace("local: { type: embedded }", "local: { type: embedded, capacty: 10 }");
    let e = load(&bad).unwrap_err();
    assert_eq!(e.issues.len(), 1, "only the transport's own error: {e}");
    assert!(e.issues[0].path.starts_with("transports.local"), "{e}");
    assert!(e.issues[0].pos.is_some(), "{e}");
}

#[test]
fn a_config_consuming_from_kafka_without_an_instance_id_is_warned_about() {
    let kafka = GOOD.replace("  local: { type: embedded }", "  local: { type: kafka, bootstrap_servers: \"k:9092\" }");
    let warned = |text: &str, env: Option<&str>| {
        let env = env.map(str::to_string);
        let l =
            load_str(text, Path::new("c.yaml"), move |v| (v == "CONVEYOR_INSTANCE_ID").then(|| env.clone()).flatten())
                .unwrap();
        l.warnings.iter().any(|w| w.to_string().contains("service.instance_id is not set"))
    };
    // (config, CONVEYOR_INSTANCE_ID, warned?)
    let table = [
        (kafka.clone(), None, true),
        (kafka.replace("name: conveyor,", "name: conveyor, instance_id: node-1,"), None, false),
        (kafka.clone(), Some("node-2"), false),
        (kafka.clone(), Some("  "), true),
        (GOOD.to_string(), None, false), // embedded: one process anyway
    ];
    for (i, (text, env, want)) in table.into_iter().enumerate() {
        assert_eq!(warned(&text, env), want, "row {i}");
    }
    let l = load(&kafka).unwrap();
    let w = l.warnings.iter().find(|w| w.to_string().contains("instance_id")).unwrap().to_string();
    assert!(w.starts_with("c.yaml:2:1: service"), "located at `service`: {w}");
}

#[test]
fn http_sources_are_checked_where_they_are_written() {
    let with = |sources: &str| format!("{GOOD}sources:\n{sources}");
    let ok = load(&with("  web: { type: http, entity: orders.in }\n")).unwrap();
    let SourceConfig::Http(h) = &ok.config.sources["web"] else { panic!("an http source") };
    assert_eq!((h.path.as_str(), h.listen, h.max_in_flight), ("/ingest", None, 10_000));
    let table = [
        (
            "  web: { type: http, entity: orders.in, path: /metrics }\n",
            "sources.web.path",
            "belongs to the admin endpoints",
        ),
        (
            "  web: { type: http, entity: orders.in, path: /v1/x }\n",
            "sources.web.path",
            "belongs to the admin endpoints",
        ),
        ("  web: { type: http, entity: orders.in, path: ingest }\n", "sources.web.path", "must be a route"),
        ("  web: { type: http, entity: orders.in, path: \"/:x\" }\n", "sources.web.path", "must be a route"),
        ("  web: { type: http, entity: orders.in, path: \"/a//b\" }\n", "sources.web.path", "must be a route"),
        (
            "  a: { type: http, entity: orders.in }\n  b: { type: http, entity: orders.in }\n",
            "sources.b.path",
            "source \"a\" already takes /ingest",
        ),
        (
            "  web: { type: http, entity: orders.in, tls: { cert: c.pem, key: k.pem } }\n",
            "sources.web.tls",
            "needs a `listen`",
        ),
        (
            "  web: { type: http, entity: orders.in, headers: [\"bad header\"] }\n",
            "sources.web.headers.0",
            "not a valid HTTP header",
        ),
        ("  web: { type: http, entity: orders.in, max_in_flight: 0 }\n", "sources.web.max_in_flight", "between 1 and"),
        (
            "  web: { type: http, entity: orders.in, max_in_flight: 18446744073709551615 }\n",
            "sources.web.max_in_flight",
            "between 1 and",
        ),
        ("  web: { type: http, entity: orders.in, timeout: 5000h }\n", "sources.web.timeout", "at most 1h"),
        ("  web: { type: http, entity: orders.inn }\n", "sources.web.entity", "unknown entity"),
        ("  web: { type: http, entity: orders.in, lisen: \"127.0.0.1:1\" }\n", "sources.web", "lisen"),
        (
            "  orders-forward: { type: http, entity: orders.in }\n",
            "sources.orders-forward",
            "a worker is named \"orders-forward\" too",
        ),
        ("  \"mirror:x\": { type: http, entity: orders.in }\n", "sources.mirror:x", "built-in tasks'"),
    ];
    for (sources, at, says) in table {
        let e = load(&with(sources)).expect_err(sources);
        let s = e.to_string();
        assert!(s.contains(at) && s.contains(says), "{sources}: want {at} / {says}, got {s}");
        assert!(s.contains("c.yaml:"), "names the file and line: {s}");
    }
}

#[test]
fn schema_registries_and_their_references_are_checked_where_they_are_written() {
    let registries = "schema_registries:\n  conf: { type: confluent, url: \"http://r:8081\" }\n  conf2: { type: confluent, url: \"http://r2:8081\" }\n  az: { type: azure, namespace: ns.servicebus.windows.net, group: g, credential: { type: managed_identity } }\n";
    let with_stage = |stage: &str| {
        GOOD.replace("stage: { type: passthrough }", &format!("stage: {stage}")).replacen(
            "transports:",
            &format!("{registries}transports:"),
            1,
        )
    };
    let ok = load(&with_stage("{ type: decode, registry: [conf, az] }")).unwrap();
    assert!(matches!(&ok.config.workers["orders-forward"].stage, StageConfig::Decode(_)));
    let ok = load(&with_stage("{ type: map, schema: { registry: conf }, require: [id] }")).unwrap();
    let StageConfig::Map(m) = &ok.config.workers["orders-forward"].stage else { panic!("a map") };
    assert!(matches!(m.schema, Some(MapSchema::Registry(_))));
    let ok = load(&with_stage("{ type: map, schema: { type: object, required: [id] } }")).unwrap();
    let StageConfig::Map(m) = &ok.config.workers["orders-forward"].stage else { panic!("a map") };
    assert!(matches!(m.schema, Some(MapSchema::Json(_))), "an inline JSON Schema stays one");
    let table = [
        ("{ type: decode, registry: confluent }", "stage.registry", "unknown schema registry \"confluent\""),
        ("{ type: transcode, from: az, to: conf }", "stage.from", "is of type azure; this needs confluent"),
        ("{ type: transcode, from: conf, to: conf }", "stage.to", "is of type confluent; this needs azure"),
        ("{ type: encode, registry: conf, schema: { type: record } }", "stage.schema", "not a valid Avro schema"),
        ("{ type: encode, registry: conf, schema: { file: /nonexistent.avsc } }", "stage.schema", "cannot read"),
        ("{ type: decode, registry: conf, format: protobuf }", "stage", "protobuf"),
        ("{ type: map, schema: { registry: nope, format: avro } }", "stage.schema.registry", "unknown schema registry"),
        ("{ type: map, schema: { registry: conf, format: protobuf } }", "stage", "protobuf"),
        ("{ type: decode, registry: [] }", "stage.registry", "names no schema registry"),
        ("{ type: decode, registry: [conf, conf2] }", "stage.registry", "are both confluent registries"),
        (
            "{ type: encode, registry: az, subject: s, schema: { type: record, name: R, fields: [] } }",
            "stage.subject",
            "subjects are for Confluent",
        ),
        (
            "{ type: encode, registry: az, schema: { type: array, items: string } }",
            "stage.schema",
            "named by its top-level type",
        ),
        (
            "{ type: encode, registry: conf, subject: \"..\", schema: { type: array, items: string } }",
            "stage.subject",
            "must be a subject name",
        ),
        ("{ type: map, schema: { registry: conf, fromat: avro } }", "stage", "fromat"),
    ];
    for (stage, at, says) in table {
        let e = load(&with_stage(stage)).expect_err(stage);
        let s = e.to_string();
        assert!(s.contains(at) && s.contains(says), "{stage}: want {at} / {says}, got {s}");
        assert!(s.contains("c.yaml:"), "names the file and line: {s}");
    }
    let bad_registries = [
        ("  r: { type: confluent, url: \"ftp://x\" }\n", "schema_registries.r.url", "http:// or https://"),
        (
            "  r: { type: confluent, url: \"http://x\", tls: { ca: /nonexistent.pem } }\n",
            "schema_registries.r.tls.ca",
            "cannot read /nonexistent.pem",
        ),
        (
            "  r: { type: azure, namespace: \"http://x\", group: g, credential: { type: developer } }\n",
            "schema_registries.r.namespace",
            "https://",
        ),
        (
            "  r: { type: azure, namespace: ns, group: \"a/b\", credential: { type: developer } }\n",
            "schema_registries.r.group",
            "schema group",
        ),
        ("  r: { type: karapace, url: \"http://x\" }\n", "schema_registries.r", "karapace"),
        ("  r: { type: confluent, url: \"http://u:pw@x\" }\n", "schema_registries.r.url", "credentials in the URL"),
        (
            "  r: { type: confluent, url: \"http://x\", tls: { ca: /dev/null } }\n",
            "schema_registries.r.tls.ca",
            "no PEM certificate",
        ),
        ("  r: { type: confluent, url: \"http://x\", subject_strategy: topic }\n", "schema_registries.r", "topic"),
    ];
    for (entry, at, says) in bad_registries {
        let e = load(&format!("{GOOD}schema_registries:\n{entry}")).expect_err(entry);
        let s = e.to_string();
        assert!(s.contains(at) && s.contains(says), "{entry}: want {at} / {says}, got {s}");
        assert!(s.contains("c.yaml:"), "names the file and line: {s}");
    }
    // a migration's transcode names a Confluent and an Azure registry
    let migrating = |transcode: &str| {
        format!(
            "{}schema_registries:\n  conf: {{ type: confluent, url: \"http://r\" }}\n",
            GOOD.replace("local: { type: embedded }", "local: { type: embedded }\n  other: { type: embedded }").replace(
                "orders.in:  { transport: local, partitions: 4 }",
                &format!("orders.in:  {{ transport: local, partitions: 4, migrate: {{ to: other, phase: mirror, transcode: {transcode} }} }}")
            )
        )
    };
    let e = load(&migrating("{ from: conf, to: azr }")).unwrap_err().to_string();
    assert!(
        e.contains("entities.orders.in.migrate.transcode.to") && e.contains("unknown schema registry \"azr\""),
        "{e}"
    );
    assert!(e.contains("c.yaml:"), "{e}");
    // dead letters are envelopes: their entity cannot transcode
    let dlq = GOOD.replace("local: { type: embedded }", "local: { type: embedded }\n  other: { type: embedded }").replace(
        "orders.dlq: { transport: local }",
        "orders.dlq: { transport: local, migrate: { to: other, phase: mirror, transcode: { from: conf, to: az } } }",
    ) + "schema_registries:\n  conf: { type: confluent, url: \"http://r\" }\n  az: { type: azure, namespace: ns.servicebus.windows.net, group: g, credential: { type: developer } }\n";
    let e = load(&dlq).unwrap_err().to_string();
    assert!(e.contains("workers.orders-forward.dead_letter") && e.contains("not for dead letters"), "{e}");
}

#!/usr/bin/env python3
"""Schema-registry-aware Kafka / Event Hubs test tool on the official Python SDKs.

An independent client for checking Conveyor's Avro + schema registry support against
Confluent's serializers (confluent-kafka 2.16, Confluent wire format: 0x00, 4-byte
big-endian schema id, Avro binary) and Azure's AvroEncoder (azure-schemaregistry-avroencoder
1.0, content type "avro/binary+<schema id>", Avro binary body). Works against
tests/py/registry_standin.py or the real services.

Records are JSON objects: NDJSON lines from --records FILE ('-' = stdin), or generated with
--count N as {"id": "<P><i>", "n": i, "claim": {"amount": i*1.5}} (i from 0); with neither
option NDJSON is read from stdin. The Avro schema file decides what is written: fields the
schema lacks are dropped, fields the record lacks take the schema's default.

Subcommands:
  confluent-produce --bootstrap B --topic T --registry URL --schema FILE
                    [--count N [--prefix P] | --records FILE] [--key-field F]
                    [--basic-auth user:pass] [--timeout S]
      AvroSerializer (auto-register, TopicNameStrategy: subject "T-value") + Producer; key =
      str(record[F]) when --key-field is given (else none). Prints "produced N".
  confluent-consume --bootstrap B --topic T --registry URL --expect N [--timeout S]
                    [--group G] [--reader-schema FILE] [--basic-auth user:pass]
      Consumer from earliest + AvroDeserializer (writer schema fetched by id; with
      --reader-schema the data is resolved to that schema). One line per message:
        {"key": "k"|null, "partition": p, "offset": o, "schema_id": id|null, "value": {...}}
      or, when the value does not deserialize (still counted towards N):
        {"error": "...", "partition": p, "offset": o, "schema_id": id|null}
  azure-produce     --conn CS [--hub H] --registry-ns HOST:PORT --group G --schema FILE
                    [--count N [--prefix P] | --records FILE] [--key-field F] [--ca CERT]
      SchemaRegistryClient (static bearer token "py-token") + AvroEncoder(auto_register=True)
      encodes each record as an EventData (schema name = the record's full name); sent in
      input order with EventHubProducerClient (asyncio clients throughout),
      partition_key = str(record[F]) when --key-field is given (consecutive records with the
      same key share a batch). Prints "produced N".
  azure-consume     --conn CS [--hub H] --registry-ns HOST:PORT [--group G] --expect N
                    [--timeout S] [--ca CERT] [--consumer-group CG]
      EventHubConsumerClient from the start of every partition ("-1"), AvroEncoder.decode per
      event. One line per event:
        {"partition": "p", "seq": n, "key": "k"|null, "content_type": "avro/binary+<id>", "value": {...}}
      or, when decoding fails (still counted towards N):
        {"error": "...", "partition": "p", "seq": n, "key": ..., "content_type": ...}

Exit status: 0 success; 1 error (registry refused a schema, delivery failed, ...);
2 misuse; 3 timeout (consumers: fewer than N messages within --timeout s, default 30).

Connection strings for the local Event Hubs broker (`conveyor dev eventhubs`):
  Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true[;EntityPath=HUB]
--hub may be left out when the connection string has EntityPath. --registry-ns is the Azure
registry's host[:port] (HTTPS only: azure-core refuses bearer tokens over plain HTTP); --ca is
a PEM file to verify its certificate with (default: the system CAs).
"""

import argparse
import asyncio
import datetime
import decimal
import json
import logging
import struct
import sys
import time
import uuid

from eh_receive import receive_until


class Misuse(Exception):
    """Bad command line or input: exit status 2."""


# ---------------------------------------------------------------------------------------------
# helpers


def _json_default(v):
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (decimal.Decimal, uuid.UUID)):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def emit(obj):
    print(json.dumps(obj, default=_json_default), flush=True)


def _text(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def read_schema(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        json.loads(text)
    except (OSError, ValueError) as e:
        raise Misuse(f"cannot read schema {path}: {e}") from None
    return text


def _named_types(schema, ns="", out=None):
    """Named Avro types of a parsed schema JSON, by full and by short name."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, ns, out)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in ("record", "error", "enum", "fixed") and isinstance(schema.get("name"), str):
            name = schema["name"]
            ns = name.rpartition(".")[0] if "." in name else schema.get("namespace", ns)
            full = name if "." in name else (f"{ns}.{name}" if ns else name)
            out[full] = schema
            out.setdefault(name.rpartition(".")[2], schema)
            for f in schema.get("fields", []) if t in ("record", "error") else []:
                _named_types(f.get("type"), ns, out)
        elif t == "array":
            _named_types(schema.get("items"), ns, out)
        elif t == "map":
            _named_types(schema.get("values"), ns, out)
        elif isinstance(t, (dict, list)):
            _named_types(t, ns, out)
    return out


def _fit(value, schema, named):
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    if isinstance(schema, list):
        branches = [named.get(b, b) if isinstance(b, str) else b for b in schema]
        recs = [b for b in branches if isinstance(b, dict) and b.get("type") in ("record", "error")]
        return _fit(value, recs[0], named) if isinstance(value, dict) and len(recs) == 1 else value
    if not isinstance(schema, dict):
        return value
    t = schema.get("type")
    if isinstance(t, (dict, list)):
        return _fit(value, t, named)
    if t in ("record", "error") and isinstance(value, dict):
        out = {}
        for f in schema.get("fields", []):
            if f["name"] in value:
                out[f["name"]] = _fit(value[f["name"]], f["type"], named)
            elif "default" in f:
                out[f["name"]] = f["default"]
        return out
    if t == "array" and isinstance(value, list):
        return [_fit(v, schema.get("items"), named) for v in value]
    if t == "map" and isinstance(value, dict):
        return {k: _fit(v, schema.get("values"), named) for k, v in value.items()}
    return value


def fit_record(rec, schema_text):
    """`rec` shaped to the schema: unknown fields dropped, missing ones set to their default
    (the Apache Avro writer behind AvroEncoder accepts neither)."""
    schema = json.loads(schema_text)
    return _fit(rec, schema, _named_types(schema))


def load_records(args):
    """The records to produce: generated (--count), from --records FILE, or stdin NDJSON."""
    if args.count is not None and args.records is not None:
        raise Misuse("--count and --records exclude each other")
    if args.count is not None:
        return [{"id": f"{args.prefix}{i}", "n": i, "claim": {"amount": i * 1.5}} for i in range(args.count)]
    src = sys.stdin if args.records in (None, "-") else None
    try:
        f = src or open(args.records, encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as e:
        raise Misuse(f"cannot read {args.records}: {e}") from None
    records = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise Misuse(f"records line {lineno}: {e}") from None
            if not isinstance(rec, dict):
                raise Misuse(f"records line {lineno}: not a JSON object")
            records.append(rec)
    return records


def record_key(rec, field):
    if field is None:
        return None
    if field not in rec:
        raise Misuse(f"record {json.dumps(rec)} has no key field {field!r}")
    return str(rec[field])


def _registry_conf(args):
    conf = {"url": args.registry}
    if args.basic_auth:
        conf["basic.auth.user.info"] = args.basic_auth
    return conf


# ---------------------------------------------------------------------------------------------
# Confluent


def confluent_produce(args):
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    schema = read_schema(args.schema)
    records = load_records(args)
    keys = [record_key(r, args.key_field) for r in records]
    registry = SchemaRegistryClient(_registry_conf(args))
    serializer = AvroSerializer(registry, schema)
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    delivered, failed = [0], []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(str(err))
        else:
            delivered[0] += 1

    for rec, key in zip(records, keys):
        value = serializer(fit_record(rec, schema), ctx)
        while True:
            try:
                producer.produce(args.topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(args.timeout)
    if failed:
        print(f"delivery failed for {len(failed)} record(s): {failed[0]}", file=sys.stderr, flush=True)
        return 1
    if left:
        print(f"timeout: {left} record(s) not delivered", file=sys.stderr, flush=True)
        return 3
    print(f"produced {delivered[0]}", flush=True)
    return 0


def confluent_consume(args):
    from confluent_kafka import Consumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    registry = SchemaRegistryClient(_registry_conf(args))
    reader = read_schema(args.reader_schema) if args.reader_schema else None
    deserializer = AvroDeserializer(registry, reader)
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group or f"schema-tool-{uuid.uuid4().hex[:12]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
    })
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.expect and time.monotonic() < deadline:
            msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr, flush=True)
                continue
            data = msg.value()
            schema_id = struct.unpack(">I", data[1:5])[0] if data and len(data) >= 5 and data[0] == 0 else None
            where = {"partition": msg.partition(), "offset": msg.offset()}
            try:
                value = deserializer(data, SerializationContext(msg.topic(), MessageField.VALUE))
            except Exception as e:  # pylint: disable=broad-except
                emit({"error": f"{type(e).__name__}: {e}", **where, "schema_id": schema_id})
            else:
                emit({"key": _text(msg.key()), **where, "schema_id": schema_id, "value": value})
            seen += 1
    finally:
        consumer.close()
    if seen >= args.expect:
        return 0
    print(f"timeout: saw {seen} of {args.expect} messages", file=sys.stderr, flush=True)
    return 3


# ---------------------------------------------------------------------------------------------
# Azure


class StaticTokenCredential:
    """Async TokenCredential handing out one fixed bearer token ("py-token", valid for an hour)."""

    def __init__(self, token="py-token"):
        self.token = token

    async def get_token(self, *scopes, **kwargs):  # pylint: disable=unused-argument
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self):
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass


def _registry_client(args):
    from azure.schemaregistry.aio import SchemaRegistryClient

    opts = {}
    if args.ca:
        opts["connection_verify"] = args.ca
    return SchemaRegistryClient(
        fully_qualified_namespace=args.registry_ns, credential=StaticTokenCredential(), **opts
    )


def _hub_opts(args):
    if args.hub:
        return {"eventhub_name": args.hub}
    if "entitypath=" not in args.conn.lower():
        raise Misuse("--hub is required unless the connection string has EntityPath")
    return {}


# The asyncio clients are used on purpose: the sync Event Hubs transport copies every TCP
# option it reads back onto the socket, and setting TCP_MAXSEG=32768 fails with EINVAL on some
# kernels (loopback), so the sync consumer never connects. The async transport leaves them alone.


async def azure_produce(args):
    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubProducerClient
    from azure.schemaregistry.encoder.avroencoder.aio import AvroEncoder

    schema = read_schema(args.schema)
    records = load_records(args)
    keys = [record_key(r, args.key_field) for r in records]
    hub_opts = _hub_opts(args)
    async with _registry_client(args) as registry, AvroEncoder(
        client=registry, group_name=args.group, auto_register=True
    ) as encoder:
        events = [
            await encoder.encode(fit_record(rec, schema), schema=schema, message_type=EventData) for rec in records
        ]
    sent = 0
    async with EventHubProducerClient.from_connection_string(args.conn, **hub_opts) as producer:
        i = 0
        while i < len(events):  # one batch per run of equal keys: input order is kept
            key = keys[i]
            batch = await producer.create_batch(**({"partition_key": key} if key is not None else {}))
            while i < len(events) and keys[i] == key:
                try:
                    batch.add(events[i])
                except ValueError:
                    if len(batch) == 0:
                        raise
                    break
                i += 1
            await producer.send_batch(batch)
            sent += len(batch)
    print(f"produced {sent}", flush=True)
    return 0


async def azure_consume(args):
    from azure.eventhub.aio import EventHubConsumerClient
    from azure.schemaregistry.encoder.avroencoder.aio import AvroEncoder

    hub_opts = _hub_opts(args)
    seen = [0]
    done = asyncio.Event()

    async with _registry_client(args) as registry, AvroEncoder(client=registry, group_name=args.group) as encoder:
        client = EventHubConsumerClient.from_connection_string(
            args.conn, consumer_group=args.consumer_group, **hub_opts
        )

        async def on_event(ctx, event):
            if event is None or done.is_set():
                return
            head = {
                "partition": ctx.partition_id,
                "seq": event.sequence_number,
                "key": _text(event.partition_key),
                "content_type": event.content_type,
            }
            try:
                line = dict(head, value=await encoder.decode(event))
            except Exception as e:  # pylint: disable=broad-except
                line = dict({"error": f"{type(e).__name__}: {e}"}, **head)
            if done.is_set():
                return
            emit(line)
            seen[0] += 1
            if seen[0] >= args.expect:
                done.set()

        async with client:
            await receive_until(client, on_event, done, args.expect, args.timeout, "-1")
    if seen[0] >= args.expect:
        return 0
    print(f"timeout: saw {seen[0]} of {args.expect} events", file=sys.stderr, flush=True)
    return 3


# ---------------------------------------------------------------------------------------------
# command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default="WARNING", help="Python logging level (e.g. DEBUG)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def records_opts(sp):
        sp.add_argument("--schema", required=True, help="Avro schema file (.avsc)")
        sp.add_argument("--count", type=int, help="generate N records")
        sp.add_argument("--prefix", default="r", help="id prefix of generated records (default r)")
        sp.add_argument("--records", help="NDJSON records file ('-' = stdin, the default)")
        sp.add_argument("--key-field", help="top-level field whose str() is the key / partition key")

    cp = sub.add_parser("confluent-produce")
    cp.add_argument("--bootstrap", required=True)
    cp.add_argument("--topic", required=True)
    cp.add_argument("--registry", required=True, help="Confluent schema registry URL")
    cp.add_argument("--basic-auth", help="user:pass for the registry")
    cp.add_argument("--timeout", type=float, default=30.0, help="flush timeout (s)")
    records_opts(cp)

    cc = sub.add_parser("confluent-consume")
    cc.add_argument("--bootstrap", required=True)
    cc.add_argument("--topic", required=True)
    cc.add_argument("--registry", required=True)
    cc.add_argument("--basic-auth", help="user:pass for the registry")
    cc.add_argument("--expect", type=int, required=True)
    cc.add_argument("--timeout", type=float, default=30.0)
    cc.add_argument("--group", help="consumer group (default: a fresh random one)")
    cc.add_argument("--reader-schema", help="Avro reader schema file (schema evolution)")

    ap = sub.add_parser("azure-produce")
    ap.add_argument("--conn", required=True)
    ap.add_argument("--hub")
    ap.add_argument("--registry-ns", required=True, help="Azure schema registry host[:port]")
    ap.add_argument("--group", required=True, help="schema group")
    ap.add_argument("--ca", help="PEM CA file for the registry's TLS certificate")
    records_opts(ap)

    ac = sub.add_parser("azure-consume")
    ac.add_argument("--conn", required=True)
    ac.add_argument("--hub")
    ac.add_argument("--registry-ns", required=True)
    ac.add_argument("--group", help="schema group (not needed for decoding)")
    ac.add_argument("--expect", type=int, required=True)
    ac.add_argument("--timeout", type=float, default=30.0)
    ac.add_argument("--ca")
    ac.add_argument("--consumer-group", default="$Default")

    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING), stream=sys.stderr)
    fn = {
        "confluent-produce": confluent_produce,
        "confluent-consume": confluent_consume,
        "azure-produce": azure_produce,
        "azure-consume": azure_consume,
    }[args.cmd]
    try:
        if asyncio.iscoroutinefunction(fn):
            return asyncio.run(fn(args))
        return fn(args)
    except Misuse as e:
        print(f"{p.prog} {args.cmd}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # pylint: disable=broad-except
        print(f"{args.cmd} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

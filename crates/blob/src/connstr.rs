//! Storage connection strings.

use crate::BlobError;

/// The emulator's documented, public account name.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The emulator's documented, public account key (not a secret).
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The emulator's default blob endpoint (path-style, account in the path).
pub const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// What a connection string says, before it becomes a client.
#[derive(PartialEq, Eq)]
pub(crate) struct Parsed {
    pub endpoint: String,
    pub account: Option<String>,
    pub key: Option<String>,
    pub sas: Option<String>,
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parsed")
            .field("endpoint", &self.endpoint)
            .field("account", &self.account)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("sas", &self.sas.as_ref().map(|s| crate::redact_sas(s)))
            .finish()
    }
}

const KNOWN: &[&str] = &[
    "accountname",
    "accountkey",
    "blobendpoint",
    "defaultendpointsprotocol",
    "endpointsuffix",
    "sharedaccesssignature",
    "usedevelopmentstorage",
];

pub(crate) fn parse(cs: &str) -> Result<Parsed, BlobError> {
    let mut vals: Vec<(&'static str, String)> = Vec::new();
    for (i, seg) in cs.split(';').enumerate() {
        let seg = seg.trim();
        if seg.is_empty() {
            continue;
        }
        let Some((k, v)) = seg.split_once('=') else {
            return Err(BlobError::Config(format!("connection string segment {} is not KEY=VALUE", i + 1)));
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().to_owned();
        // Other services' endpoints (QueueEndpoint, ...) and unknown keys are ignored.
        let Some(known) = KNOWN.iter().find(|n| **n == k) else { continue };
        if vals.iter().any(|(n, _)| n == known) {
            return Err(BlobError::Config(format!("connection string has {} twice", display_name(known))));
        }
        vals.push((known, v));
    }
    let get = |k: &str| vals.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());

    let dev = match get("usedevelopmentstorage") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(BlobError::Config("UseDevelopmentStorage must be true or false".into())),
    };

    let mut account = get("accountname").map(str::to_owned);
    let mut key = get("accountkey").map(str::to_owned);
    let sas = get("sharedaccesssignature").map(|s| s.trim_start_matches('?').to_owned());
    if dev && account.is_none() && key.is_none() {
        account = Some(DEV_ACCOUNT.into());
        key = Some(DEV_KEY.into());
    }
    if key.is_some() && sas.is_some() {
        return Err(BlobError::Config(
            "connection string has both AccountKey and SharedAccessSignature; keep one".into(),
        ));
    }
    if let Some(k) = &key {
        if account.is_none() {
            return Err(BlobError::Config("connection string has AccountKey but no AccountName".into()));
        }
        if crate::auth::decode_key(k).is_none() {
            return Err(BlobError::Config("AccountKey is not valid base64".into()));
        }
    }

    let protocol = match get("defaultendpointsprotocol") {
        None => "https",
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        Some(_) => return Err(BlobError::Config("DefaultEndpointsProtocol must be http or https".into())),
    };
    let endpoint = if let Some(ep) = get("blobendpoint") {
        ep.trim_end_matches('/').to_owned()
    } else if dev {
        DEV_ENDPOINT.to_owned()
    } else {
        let Some(acct) = &account else {
            return Err(BlobError::Config("connection string needs AccountName or BlobEndpoint".into()));
        };
        let suffix = get("endpointsuffix").unwrap_or("core.windows.net").trim_matches('.');
        format!("{protocol}://{acct}.blob.{suffix}")
    };
    Ok(Parsed { endpoint, account, key, sas })
}

fn display_name(k: &str) -> &'static str {
    match k {
        "accountname" => "AccountName",
        "accountkey" => "AccountKey",
        "blobendpoint" => "BlobEndpoint",
        "defaultendpointsprotocol" => "DefaultEndpointsProtocol",
        "endpointsuffix" => "EndpointSuffix",
        "sharedaccesssignature" => "SharedAccessSignature",
        _ => "UseDevelopmentStorage",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0a2V5c2VjcmV0a2V5"; // base64("secretkeysecretkey")

    fn ok(cs: &str) -> Parsed {
        parse(cs).unwrap_or_else(|e| panic!("{cs}: {e}"))
    }

    fn err(cs: &str) -> String {
        match parse(cs) {
            Ok(p) => panic!("{cs} parsed: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn account_and_key_default_endpoint() {
        let p = ok(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
        ));
        assert_eq!(p.endpoint, "https://acct.blob.core.windows.net");
        assert_eq!(p.account.as_deref(), Some("acct"));
        assert_eq!(p.key.as_deref(), Some(KEY));
        assert_eq!(p.sas, None);
        // protocol and suffix defaults, case-insensitive keys, padding '=' in the key kept
        let p = ok("accountname=acct;ACCOUNTKEY=YWJjZA==");
        assert_eq!(p.endpoint, "https://acct.blob.core.windows.net");
        assert_eq!(p.key.as_deref(), Some("YWJjZA=="));
        let p = ok(&format!(
            "DefaultEndpointsProtocol=HTTP;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn;"
        ));
        assert_eq!(p.endpoint, "http://acct.blob.core.chinacloudapi.cn");
    }

    #[test]
    fn blob_endpoint_wins() {
        let p = ok(&format!(
            "AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10001/devstoreaccount1/;QueueEndpoint=http://127.0.0.1:10001/x"
        ));
        assert_eq!(p.endpoint, "http://127.0.0.1:10001/devstoreaccount1");
        let p = ok("BlobEndpoint=https://x.example/;SharedAccessSignature=?sv=2021&sig=abc%3D");
        assert_eq!(p.sas.as_deref(), Some("sv=2021&sig=abc%3D"));
        assert_eq!(p.account, None);
        // endpoint alone: anonymous
        let p = ok("BlobEndpoint=https://x.example");
        assert_eq!((p.key, p.sas), (None, None));
    }

    #[test]
    fn development_storage() {
        let p = ok("UseDevelopmentStorage=true");
        assert_eq!(p.endpoint, DEV_ENDPOINT);
        assert_eq!(p.account.as_deref(), Some(DEV_ACCOUNT));
        assert_eq!(p.key.as_deref(), Some(DEV_KEY));
        let p = ok("usedevelopmentstorage=TRUE;BlobEndpoint=http://127.0.0.1:12345/devstoreaccount1");
        assert_eq!(p.endpoint, "http://127.0.0.1:12345/devstoreaccount1");
        assert_eq!(p.key.as_deref(), Some(DEV_KEY));
        assert!(err("UseDevelopmentStorage=yes").contains("UseDevelopmentStorage"));
    }

    #[test]
    fn errors_name_the_key_not_the_value() {
        let e = err("AccountName=acct;AccountKey=not*base64!");
        assert!(e.contains("AccountKey"), "{e}");
        assert!(!e.contains("not*base64"), "{e}");
        let e = err(&format!("AccountKey={KEY}"));
        assert!(e.contains("AccountName"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        let e = err("EndpointSuffix=core.windows.net");
        assert!(e.contains("AccountName or BlobEndpoint"), "{e}");
        let e = err("AccountName=a;DefaultEndpointsProtocol=ftp");
        assert!(e.contains("DefaultEndpointsProtocol"), "{e}");
        let e = err(&format!("AccountName=a;AccountKey={KEY};SharedAccessSignature=sv=1&sig=zzz"));
        assert!(e.contains("AccountKey") && e.contains("SharedAccessSignature") && !e.contains("zzz"), "{e}");
        let e = err("AccountName=a;garbage-secret");
        assert!(e.contains("segment 2") && !e.contains("garbage-secret"), "{e}");
        let e = err(&format!("AccountName=a;AccountName=b;AccountKey={KEY}"));
        assert!(e.contains("AccountName twice"), "{e}");
        // Debug of a parse result never shows the key or the signature
        let p = ok(&format!("AccountName=a;AccountKey={KEY}"));
        assert!(!format!("{p:?}").contains(KEY));
        let p = ok("BlobEndpoint=https://x;SharedAccessSignature=sv=1&sig=zzz");
        assert!(!format!("{p:?}").contains("zzz"));
    }
}

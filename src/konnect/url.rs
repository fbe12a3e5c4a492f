//! Base URL normalisation: the identity API lives on the global host, and a token must never travel in clear
//! text except to this machine (the simulator, a port-forward).
use std::net::IpAddr;

use reqwest::Url;

use super::error::{KonnectError, Result};
use super::response::redact_tokens;

/// Regions whose `<region>.api.konghq.com` host users may paste; identity calls are served by the global host.
const REGIONS: [&str; 6] = ["us", "eu", "au", "me", "in", "sg"];
const GLOBAL_HOST: &str = "global.api.konghq.com";

/// Normalises a user-given base URL to `scheme://host[:port][/prefix]` with no trailing slash and no `/v3`
/// (the client appends `/v3/...` itself).
pub fn normalize_base_url(raw: &str) -> Result<String> {
    let mut s = raw.trim().trim_end_matches('/');
    if let Some(stripped) = s.strip_suffix("/v3") {
        s = stripped.trim_end_matches('/');
    }
    let mut url = Url::parse(s).map_err(|e| {
        KonnectError::Config(format!(
            "base URL {:?} is not a valid URL: {e}",
            redact_tokens(s)
        ))
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(KonnectError::Config(
            "base URL must not contain credentials".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        // Not echoed: a query could carry a secret.
        return Err(KonnectError::Config(
            "base URL must not have a query or fragment".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| KonnectError::Config(format!("base URL {s:?} has no host")))?
        .to_ascii_lowercase();
    match url.scheme() {
        "https" => {
            if let Some(region) = host.strip_suffix(".api.konghq.com")
                && REGIONS.contains(&region)
            {
                url.set_host(Some(GLOBAL_HOST))
                    .map_err(|e| KonnectError::Config(e.to_string()))?;
            }
        }
        "http" => {
            if !is_loopback(&host) {
                return Err(KonnectError::Config(format!(
                    "plain http is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost), not {host:?}: use https"
                )));
            }
        }
        other => {
            return Err(KonnectError::Config(format!(
                "base URL scheme must be https (or http for loopback), not {other:?}"
            )));
        }
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    // `host_str` keeps IPv6 brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_regional_hosts_to_global_and_strips_slashes_and_v3() {
        for raw in [
            "https://eu.api.konghq.com",
            "https://us.api.konghq.com/",
            "https://au.api.konghq.com/v3",
            "https://me.api.konghq.com/v3/",
            "https://IN.api.konghq.com//",
            "https://sg.api.konghq.com",
            "https://global.api.konghq.com/v3",
            "  https://global.api.konghq.com  ",
        ] {
            assert_eq!(
                normalize_base_url(raw).unwrap(),
                "https://global.api.konghq.com",
                "{raw}"
            );
        }
    }

    #[test]
    fn keeps_other_hosts_ports_and_prefixes() {
        assert_eq!(
            normalize_base_url("https://proxy.example.com:8443/konnect/v3/").unwrap(),
            "https://proxy.example.com:8443/konnect"
        );
        assert_eq!(
            normalize_base_url("https://xx.api.konghq.com").unwrap(),
            "https://xx.api.konghq.com"
        );
    }

    #[test]
    fn plain_http_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:9/",
            "http://localhost:8080/v3",
            "http://[::1]:8080",
        ] {
            assert!(normalize_base_url(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            normalize_base_url("http://127.0.0.1:8080/v3/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "http://global.api.konghq.com",
            "http://10.0.0.1:8080",
            "http://localhost.evil.com",
            "http://[::2]:80",
            "ftp://127.0.0.1",
            "not a url",
            "",
            "https://user:pw@global.api.konghq.com",
            "https://global.api.konghq.com/?x=1",
        ] {
            let err = normalize_base_url(bad).unwrap_err();
            assert!(matches!(err, KonnectError::Config(_)), "{bad}: {err}");
        }
    }
}

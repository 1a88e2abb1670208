//! Where clients reach this coordinator: the URL standbys name when it
//! leads (see [`crate::leader`]).

use super::CoordinatorConfig;
use crate::url::CoordinatorUrl;

impl CoordinatorConfig {
    /// `advertise_url`, or the URL made from `listen` (see the field).
    pub fn advertised_url(&self) -> String {
        if let Some(url) = &self.advertise_url {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.plaintext { "http" } else { "https" };
        let ip = self.listen.ip();
        let host = if ip.is_unspecified() {
            host_name().unwrap_or_else(|| "localhost".into())
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("{scheme}://{host}:{}", self.listen.port())
    }

    /// `advertise_url` is a coordinator URL whose scheme matches
    /// `plaintext`.
    pub(super) fn validate_advertise_url(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> super::ConfigError,
        key: &dyn Fn(&str) -> std::ops::Range<usize>,
    ) -> Result<(), super::ConfigError> {
        let Some(url) = &self.advertise_url else {
            return Ok(());
        };
        let at = || key("advertise_url");
        let parsed =
            CoordinatorUrl::parse(url).map_err(|e| invalid(at(), format!("advertise_url: {e}")))?;
        if parsed.tls == self.plaintext {
            let want = if self.plaintext { "http" } else { "https" };
            return Err(invalid(
                at(),
                format!(
                    "advertise_url: this coordinator serves {want}, so give {want}://HOST:PORT"
                ),
            ));
        }
        Ok(())
    }
}

/// This machine's host name, as the kernel has it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

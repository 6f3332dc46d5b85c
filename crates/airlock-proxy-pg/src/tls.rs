//! TLS both ways: the certificate offered to clients that ask for it, and
//! the upstream URL read into where Airlock connects and whether (and
//! against which CA) the database's certificate is verified.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_postgres::config::{Host, SslMode};

use crate::{PgProxyConfig, Upstream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for clients' TLS, from PEM files.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls_cert {}: no certificate in it", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Reads `upstream` (URL or key=value form, as libpq takes it).
pub(crate) fn upstream(cfg: &PgProxyConfig) -> Result<Upstream, String> {
    // libpq's verify-ca and verify-full are not tokio-postgres's words;
    // every mode that asks for TLS verifies here anyway.
    let url = cfg
        .upstream
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let pg = tokio_postgres::Config::from_str(&url).map_err(|e| format!("upstream: {e}"))?;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(_) => return Err("upstream: only TCP hosts are supported".into()),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg
        .get_user()
        .ok_or("upstream: the URL names no user")?
        .to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8(p.to_vec()).map_err(|_| "upstream: the password is not UTF-8"))
        .transpose()?;
    let database = pg.get_dbname().unwrap_or(&user).to_owned();
    let tls = match pg.get_ssl_mode() {
        SslMode::Disable => None,
        // `prefer` would fall back to plain text on a refusal anyone on
        // the path can forge; Airlock either verifies or does not try.
        SslMode::Prefer => None,
        _ => {
            let ca = cfg
                .upstream_ca
                .as_ref()
                .ok_or("upstream asks for TLS: set upstream_ca to the CA that signed the database's certificate")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("upstream_ca: {e}"))? {
                roots
                    .add(c.map_err(|e| format!("upstream_ca: {e}"))?)
                    .map_err(|e| format!("upstream_ca: {e}"))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                ServerName::try_from(host.clone()).map_err(|e| format!("upstream host: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        }
    };
    Ok(Upstream {
        host,
        port,
        user,
        password,
        database,
        tls,
    })
}

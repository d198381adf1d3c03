//! Gauges read when scraped: for facts other code already keeps (whether Redis answers,
//! how many data planes lag, when a certificate expires), so nothing has to remember to
//! update a metric and a scrape always sees the present.

use std::path::PathBuf;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

type Read = Box<dyn Fn() -> Vec<(Vec<String>, f64)> + Send + Sync>;

/// A gauge family whose series are whatever `read` returns at scrape time.
pub struct ScrapedGauge {
    family: GaugeVec,
    read: Read,
}

impl ScrapedGauge {
    /// `labels` name the label values `read` returns, in order.
    pub fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        read: impl Fn() -> Vec<(Vec<String>, f64)> + Send + Sync + 'static,
    ) -> Self {
        Self {
            family: GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            read: Box::new(read),
        }
    }

    /// One series without labels, absent while `read` returns `None`.
    pub fn single(
        name: &str,
        help: &str,
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, help, &[], move || {
            read().map(|v| (Vec::new(), v)).into_iter().collect()
        })
    }
}

impl Collector for ScrapedGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.family.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.family.reset();
        for (labels, value) in (self.read)() {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            self.family.with_label_values(&labels).set(value);
        }
        self.family.collect()
    }
}

/// `pavilion_tls_certificate_expiry_timestamp_seconds{file}`: when each certificate (the
/// first of each PEM file) stops being valid, read from the files at scrape time so a
/// rotated file shows at once. Files that cannot be read are left out.
pub fn certificate_expiry(files: Vec<PathBuf>) -> ScrapedGauge {
    ScrapedGauge::new(
        "pavilion_tls_certificate_expiry_timestamp_seconds",
        "When the certificate in each configured PEM file expires (Unix seconds).",
        &["file"],
        move || {
            files
                .iter()
                .filter_map(|file| {
                    let not_after = not_after(&std::fs::read(file).ok()?)?;
                    Some((vec![file.display().to_string()], not_after as f64))
                })
                .collect()
        },
    )
}

/// The `notAfter` of the first certificate in `pem`, in Unix seconds.
pub fn not_after(pem: &[u8]) -> Option<i64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let certificate = block.parse_x509().ok()?;
    Some(certificate.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_at_each_scrape() {
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
        let read = value.clone();
        let gauge = ScrapedGauge::single("t_up", "test", move || {
            Some(read.load(std::sync::atomic::Ordering::Relaxed) as f64)
        });
        let first = gauge.collect();
        assert_eq!(first[0].get_metric()[0].get_gauge().get_value(), 1.0);
        value.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            gauge.collect()[0].get_metric()[0].get_gauge().get_value(),
            0.0
        );
        let absent = ScrapedGauge::single("t_none", "test", || None);
        assert!(absent.collect().iter().all(|f| f.get_metric().is_empty()));
    }

    #[test]
    fn a_certificates_expiry_is_read_from_its_file() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let certificate = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tls.crt");
        std::fs::write(&file, certificate.pem()).unwrap();
        let gauge = certificate_expiry(vec![file, dir.path().join("missing.crt")]);
        let families = gauge.collect();
        let metrics = families[0].get_metric();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].get_gauge().get_value(), 1_935_792_000.0);
    }
}

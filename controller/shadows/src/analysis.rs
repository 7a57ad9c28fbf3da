//! Production against the shadow, per endpoint, from the sinks' reports: error rates,
//! p50/p99, and a Mann-Whitney U test on the two latency histograms.
//!
//! The test works on the histograms' buckets, not on samples: every recorded value of a
//! bucket is the bucket's value (hdrhistogram's "highest equivalent value", the same
//! boundaries in both histograms), so equal buckets are ties. Ranks are averaged over
//! ties, the variance is tie-corrected, and the p-value is the normal approximation with
//! continuity correction, two-sided: what `scipy.stats.mannwhitneyu(x, y,
//! method="asymptotic")` computes on the samples the histograms hold.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;
use weft_proto::v1::{ShadowEndpointStats, ShadowReport};

/// Significance level below which the shadow is called slower (with a higher median).
pub const SLOWER_P: f64 = 0.01;
/// How much higher the shadow's median must be than the reference's to be called slower,
/// besides significant: with thousands of requests the rank test finds differences no one
/// would act on. Measured in the lab (`differences_injected_in_the_shadow_are_found`): two
/// copies of one server on one hypervisor, replayed and measured alike, differ by up to
/// 1.5 % in median over 3,000 requests per endpoint; 10 % more work shows as +4 %.
pub const MIN_SLOWDOWN: f64 = 0.03;

/// One endpoint's analysis (`ShadowEndpointAnalysis`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointAnalysis {
    pub endpoint: String,
    pub production_requests: u64,
    pub shadow_requests: u64,
    pub production_error_rate: f64,
    pub shadow_error_rate: f64,
    pub production_p50_ms: f64,
    pub production_p99_ms: f64,
    pub shadow_p50_ms: f64,
    pub shadow_p99_ms: f64,
    /// What the shadow is compared with: `baseline` (the noise baseline replica, when
    /// its latencies are reported) or `production`.
    pub reference: &'static str,
    pub reference_error_rate: f64,
    /// REST only.
    pub reference_p50_ms: f64,
    pub reference_p99_ms: f64,
    /// Two-sided p-value of the Mann-Whitney U test of the shadow's latencies against
    /// the reference's (1 when either side has none).
    pub latency_p_value: f64,
    /// p < 0.01 and the shadow's median at least 3 % above the reference's.
    pub shadow_slower: bool,
    /// One-sided p-value of the two-proportion test "the shadow errs more often than
    /// the reference" (1 when either side has no requests).
    pub error_p_value: f64,
    pub shadow_errs_more: bool,
    pub compared: u64,
    pub differing: u64,
    pub differing_fields: BTreeMap<String, u64>,
}

/// The result of a Mann-Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample (the number of pairs in which it is the larger, ties half).
    pub u1: f64,
    pub z: f64,
    /// Two-sided.
    pub p_value: f64,
}

/// `(value, count)` pairs of a histogram, ascending by value, zero counts left out.
pub fn buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| {
            (
                h.highest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            )
        })
        .filter(|(_, c)| *c > 0)
        .collect()
}

/// Mann-Whitney U test of two samples given as `(value, count)` buckets (any order,
/// repeated values allowed). `None` when either sample is empty.
pub fn mann_whitney(a: &[(u64, u64)], b: &[(u64, u64)]) -> Option<MannWhitney> {
    // value -> (count in a, count in b)
    let mut merged: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for &(v, c) in a {
        merged.entry(v).or_default().0 += c as f64;
    }
    for &(v, c) in b {
        merged.entry(v).or_default().1 += c as f64;
    }
    let n1: f64 = merged.values().map(|(x, _)| x).sum();
    let n2: f64 = merged.values().map(|(_, y)| y).sum();
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let n = n1 + n2;
    let (mut below, mut r1, mut ties) = (0.0_f64, 0.0_f64, 0.0_f64);
    for &(ca, cb) in merged.values() {
        let t = ca + cb;
        // Ranks below+1 ..= below+t, averaged.
        let rank = below + (t + 1.0) / 2.0;
        r1 += ca * rank;
        ties += t * t * t - t;
        below += t;
    }
    let u1 = r1 - n1 * (n1 + 1.0) / 2.0;
    let u2 = n1 * n2 - u1;
    let mu = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        // Every value is the same: no evidence of a difference.
        return Some(MannWhitney {
            u1,
            z: 0.0,
            p_value: 1.0,
        });
    }
    // scipy: U = max(U1, U2), z = (U - mu - 0.5) / sd, p = 2 * sf(z), at most 1.
    let z = (u1.max(u2) - mu - 0.5) / var.sqrt();
    let p_value = (2.0 * normal_sf(z)).min(1.0);
    Some(MannWhitney { u1, z, p_value })
}

/// One-sided two-proportion z-test (pooled) that `x1/n1` is above `x2/n2`: the p-value
/// (1 when either sample is empty or no proportion varies).
pub fn errors_higher_p(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 1.0;
    }
    let (x1, n1, x2, n2) = (x1.min(n1) as f64, n1 as f64, x2.min(n2) as f64, n2 as f64);
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se <= 0.0 || !se.is_finite() {
        return 1.0;
    }
    normal_sf((x1 / n1 - x2 / n2) / se).clamp(0.0, 1.0)
}

/// The standard normal's survival function, 1 - Φ(z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (W. J. Cody's rational approximations as in
/// Numerical Recipes' `erfcc`, relative error below 1.2e-7 everywhere).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// A V2-serialized histogram (empty bytes: none). `Err` says why it is not one.
pub fn decode(bytes: &[u8]) -> Result<Option<Histogram<u64>>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    check_header(bytes)?;
    let mut reader = bytes;
    Deserializer::new()
        .deserialize::<u64, _>(&mut reader)
        .map(Some)
        .map_err(|e| format!("not an hdrhistogram V2 serialization: {e:?}"))
}

/// The V2 (uncompressed) cookie: the base 0x1c849303 with the word-size bits (0x10).
const V2_COOKIE: u32 = 0x1c84_9313;
/// At most this precision and range (an hour in microseconds, rounded up to a power of
/// two): what a histogram declares decides how much memory decoding it takes.
const MAX_SIGNIFICANT_DIGITS: u32 = 4;
const MAX_HIGHEST: u64 = 1 << 32;

/// Refuses, before any allocation, a histogram that is not V2 or declares more precision
/// or range than a latency needs.
fn check_header(b: &[u8]) -> Result<(), String> {
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    let u64_at = |i: usize| {
        b.get(i..i + 8)
            .map(|x| u64::from_be_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
    };
    let short = || {
        format!(
            "a histogram of {} bytes is shorter than its V2 header",
            b.len()
        )
    };
    let cookie = u32_at(0).ok_or_else(short)?;
    if cookie != V2_COOKIE {
        return Err(format!(
            "cookie {cookie:#010x} is not hdrhistogram V2's ({V2_COOKIE:#010x}; compressed forms are not taken)"
        ));
    }
    let digits = u32_at(12).ok_or_else(short)?;
    let highest = u64_at(24).ok_or_else(short)?;
    if digits > MAX_SIGNIFICANT_DIGITS || highest > MAX_HIGHEST {
        return Err(format!(
            "a histogram of {digits} significant digits up to {highest} is beyond {MAX_SIGNIFICANT_DIGITS} digits up to {MAX_HIGHEST} µs"
        ));
    }
    Ok(())
}

/// One endpoint summed over sinks.
#[derive(Debug, Default)]
struct Sum {
    production_requests: u64,
    production_errors: u64,
    shadow_requests: u64,
    shadow_errors: u64,
    production: Option<Histogram<u64>>,
    shadow: Option<Histogram<u64>>,
    baseline_requests: u64,
    baseline_errors: u64,
    baseline: Option<Histogram<u64>>,
    compared: u64,
    differing: u64,
    differing_fields: BTreeMap<String, u64>,
}

fn add_into(into: &mut Option<Histogram<u64>>, bytes: &[u8], problems: &mut Vec<String>) {
    match decode(bytes) {
        Ok(None) => {}
        Ok(Some(h)) => {
            // The sum resizes itself: the sinks' histograms may have other bounds.
            let sum = match into {
                Some(sum) => sum,
                None => match Histogram::<u64>::new(3) {
                    Ok(sum) => into.insert(sum),
                    Err(e) => {
                        problems.push(format!("no histogram to sum into: {e:?}"));
                        return;
                    }
                },
            };
            if let Err(e) = sum.add(&h) {
                problems.push(format!("histograms cannot be added: {e:?}"));
            }
        }
        Err(e) => problems.push(e),
    }
}

fn quantile_ms(h: Option<&Histogram<u64>>, q: f64) -> f64 {
    match h {
        Some(h) if !h.is_empty() => h.value_at_quantile(q) as f64 / 1000.0,
        _ => 0.0,
    }
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

/// Every endpoint of `reports` (one per sink), summed, analysed, sorted by endpoint. The
/// second value lists what could not be read (a histogram that does not decode), in
/// words; such a histogram is left out.
pub fn analyse<'a>(
    reports: impl IntoIterator<Item = &'a ShadowReport>,
) -> (Vec<EndpointAnalysis>, Vec<String>) {
    let mut sums: BTreeMap<String, Sum> = BTreeMap::new();
    let mut problems = Vec::new();
    for r in reports {
        for e in &r.endpoints {
            let s = sums.entry(e.endpoint.clone()).or_default();
            add_stats(s, e, &mut problems);
        }
    }
    let out = sums
        .into_iter()
        .map(|(endpoint, s)| {
            // The noise baseline is replayed and measured as the shadow is: the fairer
            // reference when the sinks report it; production otherwise.
            let with_baseline = s.baseline.as_ref().is_some_and(|h| !h.is_empty());
            let (reference, ref_hist, ref_errors, ref_requests) = if with_baseline {
                (
                    "baseline",
                    s.baseline.as_ref(),
                    s.baseline_errors,
                    s.baseline_requests,
                )
            } else {
                (
                    "production",
                    s.production.as_ref(),
                    s.production_errors,
                    s.production_requests,
                )
            };
            let test = match (ref_hist, &s.shadow) {
                (Some(r), Some(sh)) => mann_whitney(&buckets(r), &buckets(sh)),
                _ => None,
            };
            let p50 = quantile_ms(s.production.as_ref(), 0.5);
            let ref_p50 = quantile_ms(ref_hist, 0.5);
            let shadow_p50 = quantile_ms(s.shadow.as_ref(), 0.5);
            let latency_p_value = test.map_or(1.0, |t| t.p_value);
            let error_p_value =
                errors_higher_p(s.shadow_errors, s.shadow_requests, ref_errors, ref_requests);
            EndpointAnalysis {
                reference,
                reference_error_rate: rate(ref_errors, ref_requests),
                reference_p50_ms: ref_p50,
                reference_p99_ms: quantile_ms(ref_hist, 0.99),
                error_p_value,
                shadow_errs_more: error_p_value < SLOWER_P,
                endpoint,
                production_requests: s.production_requests,
                shadow_requests: s.shadow_requests,
                production_error_rate: rate(s.production_errors, s.production_requests),
                shadow_error_rate: rate(s.shadow_errors, s.shadow_requests),
                production_p50_ms: p50,
                production_p99_ms: quantile_ms(s.production.as_ref(), 0.99),
                shadow_p50_ms: shadow_p50,
                shadow_p99_ms: quantile_ms(s.shadow.as_ref(), 0.99),
                latency_p_value,
                shadow_slower: latency_p_value < SLOWER_P
                    && shadow_p50 > ref_p50 * (1.0 + MIN_SLOWDOWN),
                compared: s.compared,
                differing: s.differing,
                differing_fields: s.differing_fields,
            }
        })
        .collect();
    (out, problems)
}

fn add_stats(s: &mut Sum, e: &ShadowEndpointStats, problems: &mut Vec<String>) {
    s.production_requests = s.production_requests.saturating_add(e.production_requests);
    s.production_errors = s.production_errors.saturating_add(e.production_errors);
    s.shadow_requests = s.shadow_requests.saturating_add(e.shadow_requests);
    s.shadow_errors = s.shadow_errors.saturating_add(e.shadow_errors);
    s.compared = s.compared.saturating_add(e.compared);
    s.differing = s.differing.saturating_add(e.differing);
    for (f, n) in &e.differing_fields {
        let v = s.differing_fields.entry(f.clone()).or_default();
        *v = v.saturating_add(*n);
    }
    s.baseline_requests = s.baseline_requests.saturating_add(e.baseline_requests);
    s.baseline_errors = s.baseline_errors.saturating_add(e.baseline_errors);
    let mut mine = Vec::new();
    add_into(&mut s.baseline, &e.baseline_latency, &mut mine);
    add_into(&mut s.production, &e.production_latency, &mut mine);
    add_into(&mut s.shadow, &e.shadow_latency, &mut mine);
    problems.extend(
        mine.into_iter()
            .map(|p| format!("endpoint {:?}: {p}", e.endpoint)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};

    fn counts(values: &[u64]) -> Vec<(u64, u64)> {
        values.iter().map(|v| (*v, 1)).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mann_whitney_matches_scipy_asymptotic_on_the_docs_example() {
        // scipy.stats.mannwhitneyu's documentation: males against females,
        // method="asymptotic" gives U1 = 17 and p = 0.11134688653314041.
        let males = counts(&[19, 22, 16, 29, 24]);
        let females = counts(&[20, 11, 17, 12]);
        let t = mann_whitney(&males, &females).unwrap();
        assert_eq!(t.u1, 17.0);
        assert!(close(t.p_value, 0.111_346_886_533_140_41, 1e-6), "{t:?}");
        // Symmetric: the same p whichever sample comes first, U1 + U2 = n1 n2.
        let r = mann_whitney(&females, &males).unwrap();
        assert_eq!(r.u1, 3.0);
        assert!(close(r.p_value, t.p_value, 1e-12));
    }

    #[test]
    fn mann_whitney_with_ties_uses_average_ranks_and_the_tie_correction() {
        // x = [1, 2, 2, 3], y = [2, 3, 3, 4, 5], by hand:
        // ranks: 1 -> 1; 2 (x3) -> 3; 3 (x3) -> 6; 4 -> 8; 5 -> 9.
        // R1 = 1 + 3 + 3 + 6 = 13, U1 = 13 - 10 = 3, U2 = 20 - 3 = 17, mu = 10.
        // ties: 2 groups of 3 -> sum(t^3 - t) = 48; N = 9.
        // var = 20/12 * (10 - 48/72) = 15.5555..., sd = 3.944053...
        // z = (17 - 10 - 0.5) / sd = 1.648050..., p = 2 sf(z) = 0.0993422...
        let x = [(1, 1), (2, 2), (3, 1)];
        let y = [(2, 1), (3, 2), (4, 1), (5, 1)];
        let t = mann_whitney(&x, &y).unwrap();
        assert_eq!(t.u1, 3.0);
        let sd = (20.0_f64 / 12.0 * (10.0 - 48.0 / 72.0)).sqrt();
        assert!(close(t.z, 6.5 / sd, 1e-12), "{t:?}");
        assert!(close(t.p_value, 0.099_342_248, 1e-6), "{t:?}");
    }

    #[test]
    fn mann_whitney_degenerate_cases() {
        assert_eq!(mann_whitney(&[], &[(1, 3)]), None);
        assert_eq!(mann_whitney(&[(5, 0)], &[(1, 3)]), None);
        // All equal: no difference at all.
        let t = mann_whitney(&[(7, 10)], &[(7, 4)]).unwrap();
        assert_eq!(t.p_value, 1.0);
        // Completely separated large samples: tiny p.
        let t = mann_whitney(&[(100, 1000)], &[(200, 1000)]).unwrap();
        assert!(t.p_value < 1e-100, "{t:?}");
        assert!(t.u1 == 0.0);
    }

    proptest::proptest! {
        /// Any two samples: p in [0, 1], U1 + U2 = n1 n2, the same p either way round,
        /// and no panic.
        #[test]
        fn mann_whitney_is_bounded_and_symmetric(
            a in proptest::collection::vec((0u64..5_000, 0u64..1_000), 0..40),
            b in proptest::collection::vec((0u64..5_000, 0u64..1_000), 0..40),
        ) {
            let n1: u64 = a.iter().map(|x| x.1).sum();
            let n2: u64 = b.iter().map(|x| x.1).sum();
            match (mann_whitney(&a, &b), mann_whitney(&b, &a)) {
                (Some(x), Some(y)) => {
                    proptest::prop_assert!((0.0..=1.0).contains(&x.p_value), "{x:?}");
                    proptest::prop_assert!((x.p_value - y.p_value).abs() < 1e-9);
                    proptest::prop_assert!(
                        (x.u1 + y.u1 - (n1 as f64) * (n2 as f64)).abs() < 1e-6 * (1.0 + (n1 * n2) as f64)
                    );
                }
                (None, None) => proptest::prop_assert!(n1 == 0 || n2 == 0),
                other => proptest::prop_assert!(false, "asymmetric: {other:?}"),
            }
        }

        /// Whatever an agent sends as a histogram is decoded or refused, never a panic.
        #[test]
        fn garbage_histograms_are_refused_not_panicked_on(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let _ = decode(&bytes);
            // A valid header followed by anything.
            let mut tail = histogram(&[(1000, 5), (2000, 7)]);
            tail.truncate(40);
            tail.extend_from_slice(&bytes);
            let payload = u32::try_from(bytes.len()).unwrap().to_be_bytes();
            tail[4..8].copy_from_slice(&payload);
            let _ = decode(&tail);
            let r = ShadowReport {
                endpoints: vec![ShadowEndpointStats {
                    endpoint: "x".into(),
                    production_latency: bytes.clone(),
                    shadow_latency: bytes,
                    ..Default::default()
                }],
            };
            let (out, _) = analyse([&r]);
            proptest::prop_assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn erfc_known_values() {
        assert!(close(erfc(0.0), 1.0, 1e-7));
        assert!(close(erfc(1.0), 0.157_299_207_050_285_13, 1e-7));
        assert!(close(erfc(-1.0), 1.842_700_792_949_715, 1e-7));
        assert!(close(normal_sf(1.959_963_985), 0.025, 1e-7));
    }

    fn histogram(values: &[(u64, u64)]) -> Vec<u8> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &(v, c) in values {
            h.record_n(v, c).unwrap();
        }
        let mut out = Vec::new();
        V2Serializer::new().serialize(&h, &mut out).unwrap();
        out
    }

    fn endpoint(name: &str, prod: &[(u64, u64)], shadow: &[(u64, u64)]) -> ShadowEndpointStats {
        ShadowEndpointStats {
            endpoint: name.into(),
            production_requests: prod.iter().map(|x| x.1).sum(),
            production_errors: 1,
            shadow_requests: shadow.iter().map(|x| x.1).sum(),
            shadow_errors: 2,
            production_latency: histogram(prod),
            shadow_latency: histogram(shadow),
            compared: 5,
            differing: 1,
            differing_fields: [("body.id".to_owned(), 1)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn two_proportion_test_known_value() {
        // 30/1000 against 10/1000: pooled 0.02, z = 3.19438, one-sided p = 0.00070065.
        let p = errors_higher_p(30, 1000, 10, 1000);
        assert!(close(p, 0.000_700_650_79, 1e-8), "{p}");
        assert!(errors_higher_p(10, 1000, 30, 1000) > 0.99);
        assert_eq!(errors_higher_p(0, 0, 1, 10), 1.0);
        assert_eq!(errors_higher_p(0, 10, 0, 10), 1.0);
        assert_eq!(
            errors_higher_p(50, 10, 0, 10),
            errors_higher_p(10, 10, 0, 10)
        );
    }

    #[test]
    fn a_significant_but_small_slowdown_is_not_called_slower() {
        // 2 % slower on every request of 3,000: significant, below the effect floor.
        let e = endpoint("GET /a", &[(1000, 3000)], &[(1020, 3000)]);
        let (out, _) = analyse([&ShadowReport { endpoints: vec![e] }]);
        assert!(out[0].latency_p_value < SLOWER_P, "{:?}", out[0]);
        assert!(!out[0].shadow_slower, "{:?}", out[0]);
        // 10 %: called.
        let e = endpoint("GET /a", &[(1000, 3000)], &[(1100, 3000)]);
        let (out, _) = analyse([&ShadowReport { endpoints: vec![e] }]);
        assert!(out[0].shadow_slower, "{:?}", out[0]);
    }

    #[test]
    fn the_noise_baseline_is_the_reference_when_reported() {
        // The shadow is slower than production but as fast as its baseline replica (the
        // replay path costs the same): not slower; it errs more than the baseline.
        let mut e = endpoint("GET /a", &[(1000, 100)], &[(1500, 100)]);
        e.shadow_errors = 30;
        e.shadow_requests = 1000;
        e.baseline_requests = 1000;
        e.baseline_errors = 10;
        e.baseline_latency = histogram(&[(1500, 100)]);
        let (out, _) = analyse([&ShadowReport { endpoints: vec![e] }]);
        let a = &out[0];
        assert_eq!(a.reference, "baseline");
        assert!(!a.shadow_slower, "{a:?}");
        assert_eq!(a.latency_p_value, 1.0);
        assert!(close(a.reference_error_rate, 0.01, 1e-12));
        assert!(close(a.reference_p99_ms, 1.5, 0.002));
        assert!(a.shadow_errs_more, "{a:?}");
        // Without a baseline, production is the reference.
        let (out, _) = analyse([&ShadowReport {
            endpoints: vec![endpoint("GET /a", &[(1000, 100)], &[(1500, 100)])],
        }]);
        assert_eq!(out[0].reference, "production");
        assert!(out[0].shadow_slower);
        assert!(!out[0].shadow_errs_more);
    }

    #[test]
    fn reports_of_two_sinks_are_summed_and_a_slower_shadow_is_found() {
        // Production around 1 ms, the shadow around 1.5 ms, over two sinks.
        let a = ShadowReport {
            endpoints: vec![
                endpoint(
                    "GET /a",
                    &[(1000, 50), (1100, 50)],
                    &[(1500, 50), (1600, 50)],
                ),
                endpoint("GET /same", &[(900, 100)], &[(900, 100)]),
            ],
        };
        let b = ShadowReport {
            endpoints: vec![endpoint("GET /a", &[(1000, 50)], &[(1500, 50)])],
        };
        let (out, problems) = analyse([&a, &b]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(out.len(), 2);
        let e = &out[0];
        assert_eq!(e.endpoint, "GET /a");
        assert_eq!(e.production_requests, 150);
        assert_eq!(e.shadow_requests, 150);
        assert!(close(e.production_error_rate, 2.0 / 150.0, 1e-12));
        assert!(close(e.shadow_error_rate, 4.0 / 150.0, 1e-12));
        assert!(close(e.production_p50_ms, 1.0, 0.001), "{e:?}");
        assert!(close(e.shadow_p50_ms, 1.5, 0.002), "{e:?}");
        assert!(close(e.shadow_p99_ms, 1.6, 0.002), "{e:?}");
        assert!(e.latency_p_value < 1e-10, "{e:?}");
        assert!(e.shadow_slower);
        assert_eq!(e.compared, 10);
        assert_eq!(e.differing_fields["body.id"], 2);
        let same = &out[1];
        assert_eq!(same.latency_p_value, 1.0);
        assert!(!same.shadow_slower);
    }

    #[test]
    fn a_faster_shadow_is_not_slower_and_garbage_histograms_are_reported() {
        let r = ShadowReport {
            endpoints: vec![endpoint("GET /b", &[(2000, 100)], &[(1000, 100)])],
        };
        let (out, _) = analyse([&r]);
        assert!(out[0].latency_p_value < 0.01);
        assert!(!out[0].shadow_slower);

        // Too precise, or compressed: refused before decoding.
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 5).unwrap();
        h.record(3).unwrap();
        let mut precise = Vec::new();
        V2Serializer::new().serialize(&h, &mut precise).unwrap();
        assert!(decode(&precise).unwrap_err().contains("significant digits"));
        let mut compressed = Vec::new();
        hdrhistogram::serialization::V2DeflateSerializer::new()
            .serialize(&h, &mut compressed)
            .unwrap();
        assert!(decode(&compressed).unwrap_err().contains("cookie"));
        assert!(decode(&histogram(&[(5, 1)])).unwrap().is_some());

        let mut bad = endpoint("GET /c", &[(1, 1)], &[(1, 1)]);
        bad.shadow_latency = vec![1, 2, 3, 4, 5];
        let (out, problems) = analyse([&ShadowReport {
            endpoints: vec![bad],
        }]);
        assert_eq!(out[0].latency_p_value, 1.0);
        assert_eq!(out[0].shadow_p50_ms, 0.0);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("GET /c"), "{problems:?}");
    }
}

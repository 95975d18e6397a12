//! Vivaldi network coordinates: a pure-Rust port of HashiCorp Serf's
//! `coordinate` package, which Consul uses to estimate round-trip times (RTTs)
//! between nodes without measuring every pair.
//!
//! Each node owns a [`Client`] holding its own [`Coordinate`]. Whenever it
//! pings another node it feeds the observed RTT together with that node's
//! coordinate into [`Client::update`]; the coordinate is then nudged like a
//! mass on a spring network (Vivaldi, Dabek et al. 2004), with the refinements
//! Serf adopted from Ledlie et al. 2007 (height vector, per-node median latency
//! filter, gravity towards the origin) and Lee et al. 2010 (adjustment term).
//!
//! # Units
//! Every distance-like quantity (`vec` components, `height`, `adjustment`,
//! distances returned as `f64`) is in **seconds** as `f64`, exactly like Serf,
//! so coordinates serialise to the same JSON Consul exchanges
//! (`{"Vec":[..],"Error":..,"Adjustment":..,"Height":..}`). `error` is
//! dimensionless. [`Duration`] is used only at the API edges.
//!
//! # Deliberate differences from Serf
//! * Dimensionality mismatches never panic: distances to an incompatible
//!   coordinate are reported as infinite ([`Duration::MAX`]); updates return
//!   [`CoordinateError::DimensionalityMismatch`].
//! * When an update produces a NaN/infinite coordinate the client resets to the
//!   origin (as Serf does) *and* clears its adjustment window, so a poisoned
//!   sample cannot keep re-invalidating the coordinate for a whole window.
//! * The random unit vector used to separate coincident nodes comes from a
//!   per-client, injectable source ([`Client::with_seed`], [`Client::with_rng`]).
//! * Internal distances stay `f64` seconds; serf truncates them to whole
//!   nanoseconds (`time.Duration`) mid-update, an error of at most 1 ns.
//!
//! Fed identical random streams (and with serf's nanosecond truncation turned
//! off), this port reproduces serf's simulation results to 13 significant
//! digits (see `simulation_matches_serf_reference` in the tests).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Below this (seconds) two positions are treated as coincident; RTTs and
/// total errors are clamped up to it to avoid division by zero.
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// Largest RTT sample accepted by [`Client::update`] (inclusive).
pub const MAX_RTT: Duration = Duration::from_secs(10);

/// Tuning parameters of the algorithm (Serf's `coordinate.Config`).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Number of Euclidean dimensions (a height is added on top). Must be > 0.
    pub dimensionality: usize,
    /// Initial error of a fresh coordinate and upper bound for the error.
    pub vivaldi_error_max: f64,
    /// Maximum impact one observation has on the error estimate.
    pub vivaldi_ce: f64,
    /// Maximum impact one observation has on the coordinate.
    pub vivaldi_cc: f64,
    /// Samples kept for the adjustment term; 0 disables the adjustment.
    pub adjustment_window_size: usize,
    /// Floor for the height term, in seconds.
    pub height_min: f64,
    /// RTT samples kept per peer; the median of them is used (0 acts as 1).
    pub latency_filter_size: usize,
    /// Gravity strength (seconds); larger means weaker pull to the origin.
    pub gravity_rho: f64,
}

impl Default for Config {
    /// Serf's `DefaultConfig()`, which Consul uses unchanged.
    fn default() -> Self {
        Self {
            dimensionality: 8,
            vivaldi_error_max: 1.5,
            vivaldi_ce: 0.25,
            vivaldi_cc: 0.25,
            adjustment_window_size: 20,
            height_min: 10.0e-6,
            latency_filter_size: 3,
            gravity_rho: 150.0,
        }
    }
}

impl Config {
    /// Checks the values Serf rejects (dimensionality 0) plus values that
    /// could only ever produce invalid coordinates.
    pub fn validate(&self) -> Result<(), CoordinateError> {
        let params = [
            self.vivaldi_error_max,
            self.vivaldi_ce,
            self.vivaldi_cc,
            self.height_min,
        ];
        if self.dimensionality == 0 {
            Err(CoordinateError::InvalidConfig("dimensionality must be >0"))
        } else if !params.iter().all(|v| v.is_finite() && *v >= 0.0) {
            Err(CoordinateError::InvalidConfig(
                "error max, CE, CC and height min must be >= 0",
            ))
        } else if !(self.gravity_rho.is_finite() && self.gravity_rho > 0.0) {
            Err(CoordinateError::InvalidConfig("gravity rho must be > 0"))
        } else {
            Ok(())
        }
    }
}

/// Errors returned by [`Client`] operations.
#[derive(Clone, Debug, PartialEq)]
pub enum CoordinateError {
    /// The RTT sample (seconds) was negative, NaN or above [`MAX_RTT`].
    InvalidRtt {
        /// The rejected sample, in seconds.
        seconds: f64,
    },
    /// The other coordinate has a different number of dimensions.
    DimensionalityMismatch {
        /// Dimensionality of this client's coordinate.
        expected: usize,
        /// Dimensionality of the offending coordinate.
        actual: usize,
    },
    /// The coordinate has a NaN or infinite component.
    InvalidCoordinate,
    /// The [`Config`] is unusable.
    InvalidConfig(&'static str),
}

impl fmt::Display for CoordinateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRtt { seconds } => write!(
                f,
                "round trip time not in valid range, {seconds}s is not a value between 0 and {}s",
                MAX_RTT.as_secs()
            ),
            Self::DimensionalityMismatch { expected, actual } => write!(
                f,
                "dimensions aren't compatible: expected {expected}, got {actual}"
            ),
            Self::InvalidCoordinate => {
                f.write_str("coordinate is invalid (NaN or infinite component)")
            }
            Self::InvalidConfig(msg) => write!(f, "invalid coordinate config: {msg}"),
        }
    }
}

impl std::error::Error for CoordinateError {}

/// A network coordinate. All fields except `error` are in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    /// Euclidean part of the coordinate.
    pub vec: Vec<f64>,
    /// Confidence in the coordinate (dimensionless, lower is better).
    pub error: f64,
    /// Offset learned from recent observation residuals (Lee et al.).
    pub adjustment: f64,
    /// Non-Euclidean "access link" latency of the node.
    pub height: f64,
}

impl Coordinate {
    /// A coordinate at the origin with maximal error and minimal height.
    pub fn new(config: &Config) -> Self {
        Self {
            vec: vec![0.0; config.dimensionality],
            error: config.vivaldi_error_max,
            adjustment: 0.0,
            height: config.height_min,
        }
    }

    /// False if any component is NaN or infinite.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|v| v.is_finite())
            && self.error.is_finite()
            && self.adjustment.is_finite()
            && self.height.is_finite()
    }

    /// True if both coordinates have the same dimensionality.
    pub fn is_compatible_with(&self, other: &Self) -> bool {
        self.vec.len() == other.vec.len()
    }

    /// Vivaldi distance in seconds (Euclidean distance plus both heights),
    /// ignoring adjustments. Infinite for incompatible coordinates.
    pub fn raw_distance_to(&self, other: &Self) -> f64 {
        if !self.is_compatible_with(other) {
            return f64::INFINITY;
        }
        magnitude_of_diff(&self.vec, &other.vec) + self.height + other.height
    }

    /// Estimated RTT in seconds including both adjustment terms; the
    /// adjustments are ignored if they would make the estimate non-positive.
    /// Infinite for incompatible coordinates.
    pub fn distance_to_secs(&self, other: &Self) -> f64 {
        let raw = self.raw_distance_to(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        if adjusted > 0.0 { adjusted } else { raw }
    }

    /// Estimated RTT as a [`Duration`] ([`Duration::MAX`] if incompatible).
    pub fn distance_to(&self, other: &Self) -> Duration {
        secs_to_duration(self.distance_to_secs(other))
    }

    /// Moves this coordinate by `force` seconds along the unit vector pointing
    /// from `other` to `self` (a positive force repels). The height grows or
    /// shrinks proportionally, never below `config.height_min`. Assumes the
    /// coordinates are compatible.
    fn apply_force(
        &self,
        config: &Config,
        force: f64,
        other: &Self,
        rng: &mut dyn FnMut() -> f64,
    ) -> Self {
        let mut ret = self.clone();
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, rng);
        for (v, u) in ret.vec.iter_mut().zip(&unit) {
            *v += u * force;
        }
        if mag > ZERO_THRESHOLD {
            let h = (ret.height + other.height) * force / mag + ret.height;
            // Like Go's math.Max, let NaN through so the client can detect it.
            ret.height = if h < config.height_min {
                config.height_min
            } else {
                h
            };
        }
        ret
    }
}

/// Converts seconds to a [`Duration`], saturating: NaN or non-positive values
/// become zero and values too large (including infinity) become
/// [`Duration::MAX`].
pub fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

fn magnitude_of_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Unit vector pointing at `a` from `b` and the distance between them. For
/// coincident points a random unit vector (from `rng`, uniform in `[0, 1)`)
/// and a distance of zero are returned.
fn unit_vector_at(a: &[f64], b: &[f64], rng: &mut dyn FnMut() -> f64) -> (Vec<f64>, f64) {
    let mut ret: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mag = ret.iter().map(|v| v * v).sum::<f64>().sqrt();
    // Multiply by the reciprocal (as serf does) for bit-identical results.
    if mag > ZERO_THRESHOLD {
        ret.iter_mut().for_each(|v| *v *= 1.0 / mag);
        return (ret, mag);
    }
    ret.iter_mut().for_each(|v| *v = rng() - 0.5);
    let mag = ret.iter().map(|v| v * v).sum::<f64>().sqrt();
    if mag > ZERO_THRESHOLD {
        ret.iter_mut().for_each(|v| *v *= 1.0 / mag);
        return (ret, 0.0);
    }
    // Exceedingly rare: give up and point along the first dimension.
    ret.iter_mut().for_each(|v| *v = 0.0);
    if let Some(first) = ret.first_mut() {
        *first = 1.0;
    }
    (ret, 0.0)
}

/// Source of uniform samples in `[0, 1)` used for random unit vectors.
pub type UnitRng = Box<dyn FnMut() -> f64 + Send + Sync>;

/// SplitMix64-based default [`UnitRng`] (no external dependency).
fn splitmix_rng(seed: u64) -> UnitRng {
    let mut state = seed;
    Box::new(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Counters of notable events inside a [`Client`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Times the coordinate was reset because it became NaN/infinite.
    pub resets: u64,
}

/// Maintains one node's coordinate estimate (Serf's `coordinate.Client`).
///
/// Not internally synchronised: wrap it in a `Mutex`/`RwLock` to share it.
pub struct Client {
    coord: Coordinate,
    origin: Coordinate,
    config: Config,
    adjustment_index: usize,
    adjustment_samples: Vec<f64>,
    /// Last few RTT samples (seconds) per peer; see [`Client::forget_node`].
    latency_filter_samples: HashMap<String, VecDeque<f64>>,
    stats: ClientStats,
    rng: UnitRng,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("coord", &self.coord)
            .field("config", &self.config)
            .field("adjustment_index", &self.adjustment_index)
            .field("adjustment_samples", &self.adjustment_samples)
            .field("tracked_nodes", &self.latency_filter_samples.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client at the origin, with a randomly seeded unit-vector RNG. Does
    /// not validate `config` (use [`Client::try_new`] for Serf's checks); a
    /// zero-dimensional config degrades to height-only coordinates.
    pub fn new(config: Config) -> Self {
        let seed = RandomState::new().hash_one(0x5EED_u64);
        Self {
            coord: Coordinate::new(&config),
            origin: Coordinate::new(&config),
            adjustment_index: 0,
            adjustment_samples: vec![0.0; config.adjustment_window_size],
            latency_filter_samples: HashMap::new(),
            stats: ClientStats::default(),
            rng: splitmix_rng(seed),
            config,
        }
    }

    /// Like [`Client::new`] but rejects invalid configs ([`Config::validate`]).
    pub fn try_new(config: Config) -> Result<Self, CoordinateError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// Replaces the unit-vector RNG with a deterministic one seeded by `seed`.
    #[must_use]
    pub fn with_seed(self, seed: u64) -> Self {
        self.with_rng(splitmix_rng(seed))
    }

    /// Replaces the unit-vector RNG; `rng` must yield uniform values in `[0, 1)`.
    #[must_use]
    pub fn with_rng(mut self, rng: UnitRng) -> Self {
        self.rng = rng;
        self
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A copy of the current coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.coord.clone()
    }

    /// Forces the coordinate to a known state (e.g. one restored from disk).
    pub fn set_coordinate(&mut self, coord: &Coordinate) -> Result<(), CoordinateError> {
        self.check_coordinate(coord)?;
        self.coord = coord.clone();
        Ok(())
    }

    /// Drops the latency filter kept for `node`; call it when a node leaves so
    /// per-peer state stays bounded by the live membership.
    pub fn forget_node(&mut self, node: &str) {
        self.latency_filter_samples.remove(node);
    }

    /// Number of peers that currently have latency-filter state.
    pub fn tracked_nodes(&self) -> usize {
        self.latency_filter_samples.len()
    }

    /// A copy of the event counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Estimated RTT from this client's coordinate to `other`.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        self.coord.distance_to(other)
    }

    /// Incorporates an RTT observation to `node`, whose coordinate is `other`,
    /// and returns the updated coordinate. RTTs above [`MAX_RTT`] are
    /// rejected; a zero RTT is accepted.
    pub fn update(
        &mut self,
        node: &str,
        other: &Coordinate,
        rtt: Duration,
    ) -> Result<Coordinate, CoordinateError> {
        self.update_secs(node, other, rtt.as_secs_f64())
    }

    /// [`Client::update`] with the RTT in seconds; negative or NaN samples are
    /// rejected too.
    pub fn update_secs(
        &mut self,
        node: &str,
        other: &Coordinate,
        rtt_secs: f64,
    ) -> Result<Coordinate, CoordinateError> {
        self.check_coordinate(other)?;
        if !(0.0..=MAX_RTT.as_secs_f64()).contains(&rtt_secs) {
            return Err(CoordinateError::InvalidRtt { seconds: rtt_secs });
        }
        let rtt = self.latency_filter(node, rtt_secs);
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coord.is_valid() {
            self.stats.resets += 1;
            self.coord = Coordinate::new(&self.config);
            self.adjustment_samples.iter_mut().for_each(|s| *s = 0.0);
            self.adjustment_index = 0;
        }
        Ok(self.coord.clone())
    }

    fn check_coordinate(&self, coord: &Coordinate) -> Result<(), CoordinateError> {
        if !self.coord.is_compatible_with(coord) {
            return Err(CoordinateError::DimensionalityMismatch {
                expected: self.coord.vec.len(),
                actual: coord.vec.len(),
            });
        }
        if !coord.is_valid() {
            return Err(CoordinateError::InvalidCoordinate);
        }
        Ok(())
    }

    /// Records a sample for `node` and returns the moving median.
    fn latency_filter(&mut self, node: &str, rtt: f64) -> f64 {
        let size = self.config.latency_filter_size.max(1);
        let samples = self
            .latency_filter_samples
            .entry(node.to_owned())
            .or_insert_with(|| VecDeque::with_capacity(size));
        samples.push_back(rtt);
        while samples.len() > size {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(rtt)
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let dist = self.coord.distance_to_secs(other);
        let rtt = rtt.max(ZERO_THRESHOLD); // rtt is never NaN here
        let wrongness = (dist - rtt).abs() / rtt;

        let mut total_error = self.coord.error + other.error;
        if total_error < ZERO_THRESHOLD {
            total_error = ZERO_THRESHOLD;
        }
        let weight = self.coord.error / total_error;

        let ce = self.config.vivaldi_ce;
        self.coord.error = ce * weight * wrongness + self.coord.error * (1.0 - ce * weight);
        if self.coord.error > self.config.vivaldi_error_max {
            self.coord.error = self.config.vivaldi_error_max;
        }

        let force = self.config.vivaldi_cc * weight * (rtt - dist);
        self.coord = self
            .coord
            .apply_force(&self.config, force, other, &mut self.rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        // The existing adjustments must not feed back, hence the raw distance.
        let dist = self.coord.raw_distance_to(other);
        if let Some(slot) = self.adjustment_samples.get_mut(self.adjustment_index) {
            *slot = rtt - dist;
        }
        self.adjustment_index = (self.adjustment_index + 1) % window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coord.adjustment = sum / (2.0 * window as f64);
    }

    /// Pulls the coordinate gently towards the origin to counter drift.
    fn update_gravity(&mut self) {
        let dist = self.origin.distance_to_secs(&self.coord);
        let force = -(dist / self.config.gravity_rho).powi(2);
        self.coord = self
            .coord
            .apply_force(&self.config, force, &self.origin, &mut self.rng);
    }
}

#[cfg(test)]
mod tests;

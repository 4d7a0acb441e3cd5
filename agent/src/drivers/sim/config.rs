//! Settings of the sim driver (`driver = "sim"`): how many synthetic gauges
//! a poll adds.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::drivers::settings::{DriverTable, Settings};

/// The simulated device: a counter plus optional synthetic gauges.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimConfig {
    /// Extra `gauge` series per poll, labelled `i = "0".."series-1"`.
    pub series: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    series: Option<u32>,
}

impl Settings for SimConfig {
    fn parse(mut table: DriverTable<'_, '_>) -> Result<Self, ConfigError> {
        let raw: RawSim = table.deserialize()?;
        Ok(SimConfig {
            series: raw.series.unwrap_or(0),
        })
    }
}
